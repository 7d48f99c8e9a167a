//! One typed [`Config`], read from the environment and validated at start.
//!
//! Owns: the names of every variable in SPEC.md, their defaults, and the
//! checks on their values. Every bad value is reported at once, each naming
//! its variable and the form it expects; `main` turns that into exit code 2.
//!
//! Does not own: what the values mean at run time (that is each module's
//! business) or logging setup (see `logging`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;

/// One variable switchyard reads: its name (exactly as SPEC.md has it), its
/// default as a user would write it, and one line on what it does.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> Variable {
    Variable {
        name,
        default,
        meaning,
    }
}

/// Every variable switchyard reads, grouped as docs/configuration.md groups
/// them; `switchyard --help` prints this table, and `from_env` reads only
/// these names. (`RUST_LOG` and `TOKIO_WORKER_THREADS` are read by the
/// logging setup and the runtimes, not here, but listed for the reader.)
pub const GROUPS: &[(&str, &[Variable])] = &[
    (
        "Serving",
        &[
            var("PORT", "8080", "public port (Railway sets it); 0 picks a free one"),
            var("HOST", "::", "bind address; :: is dual-stack"),
            var("WEBSOCKET_ENABLED", "true", "false: /ws answers 404; SSE and polling keep working"),
            var("WEBSOCKET_PATH", "/ws", "where the broadcaster lives"),
        ],
    ),
    (
        "Dashboard and engine",
        &[
            var("DASHBOARD_URL", "unset", "the dashboard every other path is proxied to (http://host:port)"),
            var("DASHBOARD_COMMAND", "unset", "shell command started and supervised as the dashboard (its $PORT: the dashboard's)"),
            var("WORKER_COMMAND", "unset", "shell command started and supervised beside it: the engine (one replica at a time with REDIS_URL)"),
            var("UPSTREAM_TIMEOUT_SECS", "60", "the dashboard kept us waiting this long: 504"),
            var("MAX_TUNNELS", "10000", "proxied WebSocket upgrades open at once; past it 503"),
            var("TUNNEL_IDLE_SECS", "600", "a proxied tunnel silent both ways this long is closed"),
        ],
    ),
    (
        "Access",
        &[
            var("PUBLISH_TOKEN", "unset", "bearer token for publishing; unset: only the same machine (loopback) publishes"),
            var("AUTH_SECRET", "unset", "HS256 key (>= 32 bytes): readers need a signed, topic-scoped token"),
            var("BASIC_AUTH", "unset", "user:bcrypt-hash[,...]: a site password in front of all but /health"),
            var("TRUSTED_PROXIES", "loopback + private", "peers whose X-Forwarded-* are believed (IPs/CIDRs)"),
            var("CORS_ORIGINS", "unset", "origins allowed for CORS and the WebSocket Origin check; unset: same origin"),
        ],
    ),
    (
        "Limits",
        &[
            var("HISTORY_SIZE", "1000", "events kept for resume"),
            var("HISTORY_MAX_BYTES", "16777216", "bytes of history kept for resume"),
            var("MAX_RETAINED_BYTES", "67108864", "retained state cap; a publish past it answers 507"),
            var("MAX_PATTERNS_PER_CLIENT", "256", "topic patterns one client may hold"),
            var("MAX_CONNECTIONS", "100000", "WebSocket + SSE clients + waiting long-polls; past it 503"),
            var("MAX_HTTP_CONNECTIONS", "auto", "HTTP connections open at once (+ h2c requests in flight); past it 503 and close; auto: half the open-file limit, <= 100000"),
            var("MAX_MESSAGE_BYTES", "65536", "largest publish body or client frame (413 / close 1009)"),
            var("CLIENT_QUEUE", "1024", "messages queued per client before it is cut off (close 1008)"),
            var("WRITE_TIMEOUT_SECS", "30", "a client that accepts no bytes this long is closed"),
            var("PING_INTERVAL_SECS", "25", "server pings; a client silent for 3 intervals is closed"),
        ],
    ),
    (
        "Several replicas",
        &[
            var("REDIS_URL", "unset", "redis://[user:password@]host[:port][/db]: replicas share events, state and history"),
            var("REDIS_PREFIX", "switchyard:", "key prefix, so several apps can share one Redis"),
            var("REPLICA_URL", "detected", "how the other replicas reach this one (http://[addr]:PORT); default: the host's first non-loopback address"),
        ],
    ),
    (
        "Shutdown and logs",
        &[
            var("SHUTDOWN_GRACE_SECS", "10", "drain time after SIGTERM/SIGINT"),
            var("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "unset", "Railway's SIGTERM-to-SIGKILL gap; the grace fits inside it"),
            var("LOG_FORMAT", "pretty", "json: one JSON object per line"),
        ],
    ),
    (
        "Public address (for the WebSocket URI given to pages)",
        &[
            var("RAILWAY_PUBLIC_DOMAIN", "unset", "wss://DOMAIN/ws (Railway sets it)"),
            var("RAILWAY_STATIC_URL", "unset", "the same, older Railway name"),
            var("PUBLIC_URL", "unset", "the same for anywhere else (http:// gives ws://)"),
        ],
    ),
];

/// Read by the logging setup and the runtimes rather than by `Config`.
pub const OTHER_VARIABLES: &[Variable] = &[
    var(
        "RUST_LOG",
        "info",
        "log filter, e.g. debug or switchyard=debug,hyper=info",
    ),
    var(
        "TOKIO_WORKER_THREADS",
        "CPU count",
        "HTTP event loops (one thread each)",
    ),
];

/// The host and port of a `redis://` URL, for logs: never the user or the
/// password (`redis://:secret@db.internal:6379/0` → `db.internal:6379`).
pub fn redis_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        "localhost:6379".to_owned()
    } else if host.ends_with(']') || !host.contains(':') {
        format!("{host}:6379")
    } else {
        host.to_owned()
    }
}

/// MAX_CONNECTIONS when unset: a ceiling, not a promise (see
/// `raise_open_file_limit`, which warns only when a user chose more than
/// the open-file limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Descriptors the process needs besides its clients: listener, dashboard
/// connections, logs, the child process.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// MAX_HTTP_CONNECTIONS when unset: what the open-file limit holds (the
/// hard one: `run` raises the soft limit to it) once [`RESERVED_DESCRIPTORS`]
/// are set aside, halved because a proxied connection may hold a
/// dashboard connection too (nginx counts both against
/// `worker_connections`), within 64..=100 000.
pub fn default_max_http_connections() -> usize {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(_, hard)| hard);
    let fits = hard.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(fits)
        .unwrap_or(usize::MAX)
        .clamp(64, 100_000)
}

/// Whether `name` is one of the variables `Config` reads.
pub fn is_variable(name: &str) -> bool {
    GROUPS
        .iter()
        .flat_map(|(_, vars)| vars.iter())
        .any(|variable| variable.name == name)
}

/// The variables for `--help`: each group, then one line per variable.
pub fn help_text() -> String {
    let mut text = String::new();
    let others = [("Runtime", OTHER_VARIABLES)];
    for (group, vars) in GROUPS.iter().chain(others.iter()) {
        text.push_str(&format!("\n{group}:\n"));
        for v in vars.iter() {
            text.push_str(&format!(
                "  {:<36} {}\n",
                format!("{}={}", v.name, v.default),
                v.meaning
            ));
        }
    }
    text
}

/// Where Streamlit listens unless told otherwise; the upstream when only
/// `DASHBOARD_COMMAND` is given.
pub const DEFAULT_SUPERVISED_DASHBOARD: &str = "http://127.0.0.1:8501";

/// The prefix of every route switchyard keeps for itself.
pub const RESERVED_PREFIX: &str = "/_switchyard/";

/// The validated configuration of one gateway process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the public listener binds: `HOST:PORT`, dual-stack `[::]` by default.
    pub listen_addr: SocketAddr,
    /// `false` turns `/ws` into a 404; the HTTP transports keep working.
    pub websocket_enabled: bool,
    /// Path of the broadcaster; never under `/_switchyard/`.
    pub websocket_path: String,
    /// The dashboard every unreserved path is proxied to, if any.
    pub dashboard_url: Option<UpstreamUrl>,
    /// Shell command that runs the dashboard, supervised by the gateway.
    pub dashboard_command: Option<String>,
    /// Shell command of a background process (the trading engine) the
    /// gateway runs and supervises beside the dashboard.
    pub worker_command: Option<String>,
    /// How long the dashboard may take to send a response head before 504.
    pub upstream_timeout: Duration,
    /// Peers whose X-Forwarded-* and X-Real-IP headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Bearer token for publishing; without it only loopback peers publish.
    pub publish_token: Option<Secret>,
    /// HS256 key for access tokens (at least 32 bytes); set, every read
    /// path needs a token (see `auth`).
    pub auth_secret: Option<Secret>,
    /// `BASIC_AUTH` users and their bcrypt hashes: a password in front of
    /// every route but `/health`.
    pub basic_auth: Vec<BasicUser>,
    /// Origins allowed for CORS and the WebSocket Origin check.
    pub cors_origins: Vec<String>,
    /// Events kept for resume.
    pub history_size: usize,
    /// WebSocket + SSE clients at once; past it new ones get 503.
    pub max_connections: usize,
    /// HTTP connections open at once, plus h2c requests in flight (see
    /// `layers::shed`); past it a connection gets 503 and is closed.
    pub max_http_connections: usize,
    /// Largest publish body or client frame.
    pub max_message_bytes: usize,
    /// Messages queued per client before it is cut off as too slow.
    pub client_queue: usize,
    /// Interval of server pings; three silent intervals close a client.
    pub ping_interval: Duration,
    /// Drain time after SIGTERM/SIGINT, already fitted to Railway's gap.
    pub shutdown_grace: Duration,
    /// A client (WebSocket, SSE, long-poll, tunnel, any HTTP response) that
    /// accepts no bytes this long while we have bytes for it is closed.
    pub write_timeout: Duration,
    /// Topic patterns one client may hold; past it: 400 or an `error` frame.
    pub max_patterns_per_client: usize,
    /// Bytes of retained state (topic + data of every retained event); a
    /// publish that would pass it answers 507 and changes nothing.
    pub max_retained_bytes: usize,
    /// Bytes of history kept for resume, besides HISTORY_SIZE events: the
    /// oldest events go first when either bound is reached.
    pub history_max_bytes: usize,
    /// Proxied upgrades (Streamlit's WebSocket) open at once; past it: 503.
    pub max_tunnels: usize,
    /// A proxied tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
    /// Redis backplane; unset keeps the in-process hub.
    pub redis_url: Option<Secret>,
    /// Key prefix in Redis, so several apps can share one server.
    pub redis_prefix: String,
    /// How the other replicas reach this one (`http://[addr]:PORT`), used
    /// only with REDIS_URL; unset: detected at start (see `replicas::address`).
    pub replica_url: Option<UpstreamUrl>,
    /// `pretty` for people, `json` for machines.
    pub log_format: LogFormat,
    /// The WebSocket URI a browser should use (wss://DOMAIN/ws on Railway).
    pub public_websocket_uri: String,
    /// True when no public domain is configured and the URI is the local
    /// `ws://localhost:PORT/ws`, which must follow the port really bound.
    public_uri_is_local: bool,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// One `user:bcrypt-hash` entry of BASIC_AUTH.
#[derive(Clone, Debug)]
pub struct BasicUser {
    pub user: String,
    /// The bcrypt hash (`$2y$…`, as `htpasswd -nbB` prints). Not secret in
    /// the way a password is, but kept out of logs all the same.
    pub hash: Secret,
}

/// Shortest AUTH_SECRET accepted: HS256 wants a key at least as long as
/// its output (RFC 7518 §3.2).
pub const MIN_AUTH_SECRET_BYTES: usize = 32;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// An `http://host:port` origin the proxy forwards to. Requests go here and
/// nowhere else, whatever their Host header or absolute URI says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Always `http`: TLS to the dashboard is out of scope (it runs beside us).
    pub scheme: Scheme,
    /// `host:port` as written, used to build every upstream URI.
    pub authority: Authority,
    /// `host:port` with the default port filled in, for the TCP probe.
    pub connect_to: String,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Every problem found in the environment, one line each.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The environment as strings, read through envy; typed checks come after so
/// that every bad variable is reported, not just the first.
/// envy matches lower-cased variable names to these fields.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    port: Option<String>,
    host: Option<String>,
    websocket_enabled: Option<String>,
    websocket_path: Option<String>,
    dashboard_url: Option<String>,
    dashboard_command: Option<String>,
    worker_command: Option<String>,
    upstream_timeout_secs: Option<String>,
    trusted_proxies: Option<String>,
    publish_token: Option<String>,
    auth_secret: Option<String>,
    basic_auth: Option<String>,
    cors_origins: Option<String>,
    history_size: Option<String>,
    max_connections: Option<String>,
    max_http_connections: Option<String>,
    max_message_bytes: Option<String>,
    client_queue: Option<String>,
    ping_interval_secs: Option<String>,
    shutdown_grace_secs: Option<String>,
    write_timeout_secs: Option<String>,
    max_patterns_per_client: Option<String>,
    max_retained_bytes: Option<String>,
    history_max_bytes: Option<String>,
    max_tunnels: Option<String>,
    tunnel_idle_secs: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    replica_url: Option<String>,
    railway_deployment_draining_seconds: Option<String>,
    log_format: Option<String>,
    railway_public_domain: Option<String>,
    railway_static_url: Option<String>,
    public_url: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = HashMap::new();
        let mut problems = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !is_variable(name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => {
                    vars.insert(name.to_owned(), value);
                }
                Err(_) => problems.push(format!("{name}: not valid UTF-8")),
            }
        }
        match Config::from_vars(vars) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { problems }),
            Err(mut error) => {
                problems.append(&mut error.problems);
                Err(ConfigError { problems })
            }
        }
    }

    /// Builds a config from `NAME -> value` pairs; used by `from_env` and tests.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let raw: RawEnv = envy::from_iter(vars.into_iter().map(|(k, v)| (k.into(), v.into())))
            .map_err(|error| ConfigError {
                problems: vec![error.to_string()],
            })?;
        Checker::default().check(raw)
    }
}

impl Config {
    /// With `PORT=0` the real port is known only after binding; the local
    /// WebSocket URI follows it.
    pub fn settle_bound_port(&mut self, port: u16) {
        if self.public_uri_is_local {
            self.public_websocket_uri = local_websocket_uri(port, &self.websocket_path);
        }
    }
}

/// Collects problems while turning [`RawEnv`] into [`Config`].
#[derive(Default)]
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn check(mut self, raw: RawEnv) -> Result<Config, ConfigError> {
        let port: u16 = self.parse("PORT", &raw.port, 8080, "a port number 0-65535", |v| {
            v.parse().ok()
        });
        let host: IpAddr = self.parse(
            "HOST",
            &raw.host,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "an IP address such as :: or 0.0.0.0",
            |v| v.trim_matches(['[', ']']).parse().ok(),
        );
        let websocket_enabled = self.parse(
            "WEBSOCKET_ENABLED",
            &raw.websocket_enabled,
            true,
            "true or false",
            parse_bool,
        );
        let websocket_path = self.parse(
            "WEBSOCKET_PATH",
            &raw.websocket_path,
            "/ws".to_owned(),
            "a path starting with / of [A-Za-z0-9/_.-], not under /_switchyard/",
            |v| {
                let valid = v.starts_with('/')
                    && v.len() > 1
                    && !v.starts_with(RESERVED_PREFIX)
                    && v != "/_switchyard"
                    && v != "/health"
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
                valid.then(|| v.to_owned())
            },
        );
        let dashboard_command = non_empty(&raw.dashboard_command).map(str::to_owned);
        let worker_command = non_empty(&raw.worker_command).map(str::to_owned);
        let dashboard_url = match non_empty(&raw.dashboard_url) {
            Some(value) => self.require(
                "DASHBOARD_URL",
                value,
                "an http:// origin such as http://127.0.0.1:8501 (no path, no query)",
                parse_upstream_url,
            ),
            None if dashboard_command.is_some() => parse_upstream_url(DEFAULT_SUPERVISED_DASHBOARD),
            None => None,
        };
        let upstream_timeout =
            self.seconds("UPSTREAM_TIMEOUT_SECS", &raw.upstream_timeout_secs, 60, 1);
        let trusted_proxies = self.parse(
            "TRUSTED_PROXIES",
            &raw.trusted_proxies,
            default_trusted_proxies(),
            "comma-separated IP addresses or CIDR ranges such as 10.0.0.0/8,::1",
            parse_networks,
        );
        let publish_token = non_empty(&raw.publish_token).map(|t| Secret(t.to_owned()));
        let auth_secret = non_empty(&raw.auth_secret).and_then(|v| {
            let expected =
                format!("at least {MIN_AUTH_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)");
            self.require_secret("AUTH_SECRET", v, &expected, |v| {
                (v.len() >= MIN_AUTH_SECRET_BYTES).then(|| Secret(v.to_owned()))
            })
        });
        let basic_auth = non_empty(&raw.basic_auth)
            .and_then(|v| {
                self.require_secret(
                    "BASIC_AUTH",
                    v,
                    "user:bcrypt-hash[,user:bcrypt-hash...] as `htpasswd -nbB user password` or `switchyard hash-password` prints",
                    parse_basic_auth,
                )
            })
            .unwrap_or_default();
        let cors_origins = self.parse(
            "CORS_ORIGINS",
            &raw.cors_origins,
            Vec::new(),
            "comma-separated origins such as https://app.example.com (scheme://host[:port], or *)",
            parse_origins,
        );
        let history_size = self.count("HISTORY_SIZE", &raw.history_size, 1000, 0);
        let max_connections = self.count(
            "MAX_CONNECTIONS",
            &raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1,
        );
        let max_http_connections = match non_empty(&raw.max_http_connections) {
            Some(_) => self.count("MAX_HTTP_CONNECTIONS", &raw.max_http_connections, 0, 1),
            None => default_max_http_connections(),
        };
        let max_message_bytes = self.count("MAX_MESSAGE_BYTES", &raw.max_message_bytes, 65_536, 64);
        let client_queue = self.count("CLIENT_QUEUE", &raw.client_queue, 1024, 1);
        let ping_interval = self.seconds("PING_INTERVAL_SECS", &raw.ping_interval_secs, 25, 1);
        let configured_grace = self.count("SHUTDOWN_GRACE_SECS", &raw.shutdown_grace_secs, 10, 0);
        let draining: Option<u64> =
            non_empty(&raw.railway_deployment_draining_seconds).and_then(|v| {
                self.require(
                    "RAILWAY_DEPLOYMENT_DRAINING_SECONDS",
                    v,
                    "a whole number of seconds",
                    |v| v.parse().ok(),
                )
            });
        let shutdown_grace = Duration::from_secs(fit_grace(
            configured_grace as u64,
            non_empty(&raw.shutdown_grace_secs).is_some(),
            draining,
        ));
        let write_timeout = self.seconds("WRITE_TIMEOUT_SECS", &raw.write_timeout_secs, 30, 1);
        let max_patterns_per_client = self.count(
            "MAX_PATTERNS_PER_CLIENT",
            &raw.max_patterns_per_client,
            256,
            1,
        );
        let max_retained_bytes = self.count(
            "MAX_RETAINED_BYTES",
            &raw.max_retained_bytes,
            64 * 1024 * 1024,
            1024,
        );
        let history_max_bytes = self.count(
            "HISTORY_MAX_BYTES",
            &raw.history_max_bytes,
            16 * 1024 * 1024,
            1024,
        );
        let max_tunnels = self.count("MAX_TUNNELS", &raw.max_tunnels, 10_000, 1);
        let tunnel_idle = self.seconds("TUNNEL_IDLE_SECS", &raw.tunnel_idle_secs, 600, 1);
        let redis_url = non_empty(&raw.redis_url).and_then(|v| {
            // Parsed here by the Redis client itself (no connection is made),
            // so a URL it cannot read is a config error like any other, not
            // a start error. TLS (rediss://) is not compiled in.
            self.require_secret(
                "REDIS_URL",
                v,
                "a URL redis://[user:password@]host[:port][/db] (rediss:// needs TLS, which this build does not include)",
                |v| {
                    (v.starts_with("redis://") && redis::Client::open(v).is_ok())
                        .then(|| Secret(v.to_owned()))
                },
            )
        });
        let redis_prefix = self.parse(
            "REDIS_PREFIX",
            &raw.redis_prefix,
            "switchyard:".to_owned(),
            "1-64 characters without spaces",
            |v| (v.len() <= 64 && !v.contains(char::is_whitespace)).then(|| v.to_owned()),
        );
        let replica_url = non_empty(&raw.replica_url).and_then(|value| {
            self.require(
                "REPLICA_URL",
                value,
                "an http:// origin the other replicas reach this one at, such as http://[fd12::1]:8080 (no path)",
                parse_upstream_url,
            )
        });
        let log_format = self.parse(
            "LOG_FORMAT",
            &raw.log_format,
            LogFormat::Pretty,
            "pretty or json",
            |v| match v.to_ascii_lowercase().as_str() {
                "pretty" | "text" => Some(LogFormat::Pretty),
                "json" => Some(LogFormat::Json),
                _ => None,
            },
        );
        let public_websocket_uri = public_websocket_uri(&raw, port, &websocket_path);
        let public_uri_is_local =
            public_websocket_uri == local_websocket_uri(port, &websocket_path);

        if !self.problems.is_empty() {
            return Err(ConfigError {
                problems: self.problems,
            });
        }
        Ok(Config {
            listen_addr: SocketAddr::new(host, port),
            websocket_enabled,
            websocket_path,
            dashboard_url,
            dashboard_command,
            worker_command,
            upstream_timeout,
            trusted_proxies,
            publish_token,
            auth_secret,
            basic_auth,
            cors_origins,
            history_size,
            max_connections,
            max_http_connections,
            max_message_bytes,
            client_queue,
            ping_interval,
            shutdown_grace,
            write_timeout,
            max_patterns_per_client,
            max_retained_bytes,
            history_max_bytes,
            max_tunnels,
            tunnel_idle,
            redis_url,
            redis_prefix,
            replica_url,
            log_format,
            public_websocket_uri,
            public_uri_is_local,
        })
    }

    /// Parses an optional variable: unset or empty takes the default.
    fn parse<T>(
        &mut self,
        name: &str,
        raw: &Option<String>,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> T {
        match non_empty(raw) {
            Some(value) => self
                .require(name, value, expected, parse)
                .unwrap_or(default),
            None => default,
        }
    }

    /// Parses a present value, recording a problem (quoting the value) when
    /// it does not fit.
    fn require<T>(
        &mut self,
        name: &str,
        value: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(value);
        if parsed.is_none() {
            self.invalid(&format!("{name}={value:?}"), expected);
        }
        parsed
    }

    /// [`Checker::require`] for a value that may hold a secret: the problem
    /// names the variable and the expected form, never the value.
    fn require_secret<T>(
        &mut self,
        name: &str,
        value: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(value);
        if parsed.is_none() {
            self.invalid(
                &format!("{name} (value not shown: it may hold a secret)"),
                expected,
            );
        }
        parsed
    }

    fn invalid(&mut self, what: &str, expected: &str) {
        self.problems
            .push(format!("{what} is not valid: expected {expected}"));
    }

    fn count(&mut self, name: &str, raw: &Option<String>, default: usize, min: usize) -> usize {
        let expected = format!("a whole number >= {min}");
        self.parse(name, raw, default, &expected, |v| {
            v.parse::<usize>().ok().filter(|n| *n >= min)
        })
    }

    fn seconds(&mut self, name: &str, raw: &Option<String>, default: u64, min: u64) -> Duration {
        let expected = format!("a whole number of seconds >= {min}");
        let secs = self.parse(name, raw, default, &expected, |v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= min && *n <= 86_400 * 365)
        });
        Duration::from_secs(secs)
    }
}

fn non_empty(raw: &Option<String>) -> Option<&str> {
    raw.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `user:hash[,user:hash…]`; each hash must be bcrypt (`$2a$`, `$2b$`,
/// `$2x$` or `$2y$`), users distinct and free of `:`.
fn parse_basic_auth(value: &str) -> Option<Vec<BasicUser>> {
    let mut users: Vec<BasicUser> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (user, hash) = entry.split_once(':')?;
        let valid_hash = hash.parse::<bcrypt::HashParts>().is_ok();
        if user.is_empty() || !valid_hash || users.iter().any(|u| u.user == user) {
            return None;
        }
        users.push(BasicUser {
            user: user.to_owned(),
            hash: Secret(hash.to_owned()),
        });
    }
    (!users.is_empty()).then_some(users)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub(crate) fn parse_upstream_url(value: &str) -> Option<UpstreamUrl> {
    let uri: Uri = value.parse().ok()?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return None;
    }
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let path_is_root = matches!(uri.path(), "" | "/");
    if !path_is_root || uri.query().is_some() {
        return None;
    }
    let port = authority.port_u16().unwrap_or(80);
    let connect_to = format!("{}:{port}", authority.host());
    Some(UpstreamUrl {
        scheme: Scheme::HTTP,
        authority,
        connect_to,
    })
}

/// Loopback and private ranges: Railway's edge and private network reach the
/// service from these, and a local reverse proxy would too.
fn default_trusted_proxies() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
    ]
    .iter()
    .filter_map(|net| net.parse().ok())
    .collect()
}

fn parse_networks(value: &str) -> Option<Vec<IpNet>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<IpNet>()
                .ok()
                .or_else(|| part.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

fn parse_origins(value: &str) -> Option<Vec<String>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            if part == "*" {
                return Some(part.to_owned());
            }
            let uri: Uri = part.parse().ok()?;
            let scheme = uri
                .scheme_str()
                .filter(|s| matches!(*s, "http" | "https"))?;
            let authority = uri.authority()?;
            let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
            bare.then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
        })
        .collect()
}

/// Railway sends SIGKILL `RAILWAY_DEPLOYMENT_DRAINING_SECONDS` after SIGTERM.
/// When that is set, the grace ends one second earlier so the exit is ours;
/// an explicit `SHUTDOWN_GRACE_SECS` is kept when it is shorter.
fn fit_grace(configured: u64, explicitly_set: bool, draining: Option<u64>) -> u64 {
    match draining {
        None => configured,
        Some(draining) => {
            let fitted = draining.saturating_sub(1);
            if explicitly_set {
                configured.min(fitted)
            } else {
                fitted
            }
        }
    }
}

/// `wss://DOMAIN/ws` from the first of RAILWAY_PUBLIC_DOMAIN,
/// RAILWAY_STATIC_URL, PUBLIC_URL; `ws://localhost:PORT/ws` otherwise.
fn public_websocket_uri(raw: &RawEnv, port: u16, websocket_path: &str) -> String {
    let candidates = [
        &raw.railway_public_domain,
        &raw.railway_static_url,
        &raw.public_url,
    ];
    for candidate in candidates {
        let Some(value) = non_empty(candidate) else {
            continue;
        };
        let value = value.trim_end_matches('/');
        let (scheme, host) = if let Some(host) = value.strip_prefix("https://") {
            ("wss", host)
        } else if let Some(host) = value.strip_prefix("http://") {
            ("ws", host)
        } else {
            ("wss", value)
        };
        return format!("{scheme}://{host}{websocket_path}");
    }
    local_websocket_uri(port, websocket_path)
}

fn local_websocket_uri(port: u16, websocket_path: &str) -> String {
    format!("ws://localhost:{port}{websocket_path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_host_never_shows_the_password() {
        assert_eq!(
            redis_host("redis://:s3cret@db.internal:6390/0"),
            "db.internal:6390"
        );
        assert_eq!(redis_host("redis://user:pw@10.0.0.5"), "10.0.0.5:6379");
        assert_eq!(redis_host("redis://[::1]:7000"), "[::1]:7000");
        assert_eq!(redis_host("redis://[fd00::1]"), "[fd00::1]:6379");
        assert_eq!(
            redis_host("redis://127.0.0.1:6379?timeout=1"),
            "127.0.0.1:6379"
        );
        assert!(!redis_host("redis://u:p@h:1").contains('p'));
    }

    #[test]
    fn defaults_need_no_environment() {
        let config = Config::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(config.listen_addr, "[::]:8080".parse().unwrap());
        assert!(config.websocket_enabled);
        assert_eq!(config.websocket_path, "/ws");
        assert!(config.dashboard_url.is_none());
        assert_eq!(config.upstream_timeout, Duration::from_secs(60));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.write_timeout, Duration::from_secs(30));
        assert_eq!(config.max_patterns_per_client, 256);
        assert_eq!(config.max_retained_bytes, 67_108_864);
        assert_eq!(config.public_websocket_uri, "ws://localhost:8080/ws");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let error = Config::from_vars([
            ("PORT", "eighty"),
            ("WEBSOCKET_ENABLED", "maybe"),
            ("DASHBOARD_URL", "https://x"),
        ])
        .unwrap_err();
        let text = error.to_string();
        assert_eq!(error.problems.len(), 3, "{text}");
        assert!(text.contains("PORT=\"eighty\""), "{text}");
        assert!(text.contains("WEBSOCKET_ENABLED"), "{text}");
        assert!(text.contains("DASHBOARD_URL"), "{text}");
    }

    #[test]
    fn command_alone_defaults_to_streamlit_port() {
        let config = Config::from_vars([("DASHBOARD_COMMAND", "streamlit run app.py")]).unwrap();
        assert_eq!(
            config.dashboard_url.unwrap().to_string(),
            "http://127.0.0.1:8501"
        );
    }

    #[test]
    fn railway_draining_sizes_the_grace() {
        assert_eq!(fit_grace(10, false, Some(5)), 4);
        assert_eq!(fit_grace(10, false, Some(30)), 29);
        assert_eq!(fit_grace(10, true, Some(30)), 10);
        assert_eq!(fit_grace(3, true, None), 3);
    }

    #[test]
    fn public_uri_prefers_railway_domain() {
        let config = Config::from_vars([
            ("RAILWAY_PUBLIC_DOMAIN", "app.up.railway.app"),
            ("PUBLIC_URL", "https://other.example"),
        ])
        .unwrap();
        assert_eq!(config.public_websocket_uri, "wss://app.up.railway.app/ws");
        let config = Config::from_vars([("PUBLIC_URL", "http://box.local:9000/")]).unwrap();
        assert_eq!(config.public_websocket_uri, "ws://box.local:9000/ws");
    }

    #[test]
    fn replica_url_is_an_http_origin() {
        let config = Config::from_vars([("REPLICA_URL", "http://[fd12::1]:8080")]).unwrap();
        let url = config.replica_url.unwrap();
        assert_eq!(url.to_string(), "http://[fd12::1]:8080");
        assert_eq!(url.connect_to, "[fd12::1]:8080");
        let error = Config::from_vars([("REPLICA_URL", "https://x/y")]).unwrap_err();
        assert!(error.to_string().contains("REPLICA_URL"), "{error}");
    }

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let config = Config::from_vars([("PUBLISH_TOKEN", "hunter2")]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
