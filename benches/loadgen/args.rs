//! Command-line arguments: the usage text and their parsing.

use super::*;

pub(crate) const USAGE: &str = "\
usage: cargo bench --bench loadgen -- [options]

load:
  --clients N            WebSocket clients (default 1000)
  --rate R               events/s published, open loop (default 100)
  --duration S           seconds of publishing; with --idle, seconds to hold (default 20)
  --size B               bytes of each event's data (default 256)
  --topics T             publish round-robin on bench/0..T-1, client i subscribes to
                         bench/(i mod T) (default: one topic, every client gets everything)
  --stall K              K clients stop reading at --stall-at (default 0)
  --stall-at F           when the stall starts, as a fraction of --duration (default 0.5)
  --stall-rcvbuf B       SO_RCVBUF of stalled clients' sockets (default 65536)
  --idle                 only connect, hold, report RSS per connection
  --accept               accept rate: open --clients WebSockets as fast as the server takes
                         them, --connect-concurrency in flight, each done when its hello
                         arrives and then kept open until the end (no retries); reports
                         connections/s and server CPU per accepted connection
  --retained N           before the clients connect, publish N retained topics
                         bench/retained/0..N-1 (one request each), so every hello
                         carries them (default 0: a tiny hello)
  --retained-size B      bytes of each retained topic's data (default 3072)
  --hostile              two phases of --duration each on one server and one set of
                         clients: quiet, then the same while one anonymous WebSocket
                         client (no Origin) floods subscribe frames; reports publish RTT
                         quiet vs under flood and how the flooder was answered
  --flood-frames N       subscribe frames the flooder sends (default 30)
  --flood-patterns N     distinct patterns per frame, flood/<n in base 36>/+/x
                         (default 3600; a frame must fit MAX_MESSAGE_BYTES)
  --server-env K=V       extra environment for the server(s) (repeatable)
  --server KIND          the server under test: `switchyard` (default, SWITCHYARD_BIN) or
                         `node:SCRIPT`, a peer such as benches/peers/uws.js run by `node`
                         (NODE_BIN, default node from PATH) with the same PORT, HOST and
                         --server-env; measured the same way (its one process's
                         /proc/PID/stat and VmRSS). Not with --replicas, --redis-url, --hostile
  --throughput           (alias --max-rate) publish as fast as possible for --duration instead
                         of --rate: --pool closed-loop connections per replica, --batch events
                         per request; reports accepted events/s and whether every subscriber
                         got every seq exactly once
  --batch N              events per request with --throughput (default 50)
  --cutoff S             rate mode: nothing is published, and no answer waited for, after S
                         seconds from the schedule's start (default: none, the whole schedule
                         is sent however long it takes); a server slower than the schedule is
                         then measured over S s instead of holding the run for minutes
replicas:
  --replicas N           switchyard processes (default 1); clients are spread evenly over
                         them (client i -> replica i mod N), publishes go round-robin;
                         N > 1 needs --redis-url
  --redis-url URL        REDIS_URL of every replica (default: none, the in-process hub)
  --redis-prefix P       REDIS_PREFIX of every replica (default bench:<pid>:<nanos>:, unique
                         per run); the run deletes the keys under it at the end
publisher:
  --pool P               keep-alive HTTP/1.1 connections per replica (default 4)
  --tick-ms M            publish tick when rate > 1000/M (default 10)
  --max-body B           largest publish body; bigger ticks are split (default 60000)
client side:
  --connect-concurrency C  handshakes in flight (default 256)
  --read-buffer B        tungstenite read buffer per client; tungstenite zero-fills it
                         before every read, so keep it small (default: 2 frames, 4-64 KiB)
  --drain S              seconds to wait for stragglers after publishing (default 10)
report:
  --label TEXT           title of the table
  --target-zero-loss     PASS/MISS: no event missing for any client
  --target-no-waits      PASS/MISS: no publish had to wait
  --target-cpu-us X      PASS/MISS: server CPU per delivered message <= X us
  --target-p99-ms X      PASS/MISS: publish->receive p99 <= X ms
  --target-rss-kib X     PASS/MISS: server RSS per connection <= X KiB
  --target-stall         PASS/MISS: others' p99 during stall <= 1.5x before, stalled clients
                         closed with 1008, RSS growth during the stall < CLIENT_QUEUE x frame size
  --target-events-per-s X  PASS/MISS (--throughput): accepted events/s >= X
  --target-flood-ratio X PASS/MISS (--hostile): publish RTT p99 under flood <= X x quiet
  with --replicas > 1 a PASS/MISS line for one epoch is always printed: the first hello on
  every replica and every publish receipt carry the same epoch

The last line of the report is `result: key=value ...` for scripts (benches/redis.sh).

env: SWITCHYARD_BIN (default <crate>/target/release/switchyard), NODE_BIN (default node)
";

// ---------------------------------------------------------------- arguments

#[derive(Clone, Debug)]
pub(crate) struct Args {
    pub(crate) server: ServerKind,
    pub(crate) accept: bool,
    pub(crate) cutoff: Option<f64>,
    pub(crate) clients: usize,
    pub(crate) rate: f64,
    pub(crate) duration: f64,
    pub(crate) size: usize,
    pub(crate) topics: Option<usize>,
    pub(crate) stall: usize,
    pub(crate) stall_at: f64,
    pub(crate) stall_rcvbuf: usize,
    pub(crate) idle: bool,
    pub(crate) server_env: Vec<(String, String)>,
    pub(crate) pool: usize,
    pub(crate) tick_ms: f64,
    pub(crate) max_body: usize,
    pub(crate) connect_concurrency: usize,
    /// 0 until parsed: then sized from --size.
    pub(crate) read_buffer: usize,
    pub(crate) drain: f64,
    pub(crate) label: Option<String>,
    pub(crate) target_zero_loss: bool,
    pub(crate) target_no_waits: bool,
    pub(crate) target_cpu_us: Option<f64>,
    pub(crate) target_p99_ms: Option<f64>,
    pub(crate) target_rss_kib: Option<f64>,
    pub(crate) target_stall: bool,
    pub(crate) target_events_per_s: Option<f64>,
    pub(crate) target_flood_ratio: Option<f64>,
    pub(crate) retained: usize,
    pub(crate) retained_size: usize,
    pub(crate) hostile: bool,
    pub(crate) flood_frames: usize,
    pub(crate) flood_patterns: usize,
    pub(crate) throughput: bool,
    pub(crate) batch: usize,
    pub(crate) replicas: usize,
    pub(crate) redis_url: Option<String>,
    /// Set whenever redis_url is: given, or unique per run.
    pub(crate) redis_prefix: Option<String>,
    /// The arguments as given, for the table's command line.
    pub(crate) raw: Vec<String>,
}

impl Args {
    /// Every flag at its default (what `--help` lists).
    pub(crate) fn defaults() -> Args {
        Args {
            server: ServerKind::Switchyard,
            accept: false,
            cutoff: None,
            clients: 1000,
            rate: 100.0,
            duration: 20.0,
            size: 256,
            topics: None,
            stall: 0,
            stall_at: 0.5,
            stall_rcvbuf: 65536,
            idle: false,
            server_env: Vec::new(),
            pool: 4,
            tick_ms: 10.0,
            max_body: 60_000,
            connect_concurrency: 256,
            read_buffer: 0,
            drain: 10.0,
            label: None,
            target_zero_loss: false,
            target_no_waits: false,
            target_cpu_us: None,
            target_p99_ms: None,
            target_rss_kib: None,
            target_stall: false,
            target_events_per_s: None,
            target_flood_ratio: None,
            retained: 0,
            retained_size: 3072,
            hostile: false,
            flood_frames: 30,
            flood_patterns: 3600,
            throughput: false,
            batch: 50,
            replicas: 1,
            redis_url: None,
            redis_prefix: None,
            raw: Vec::new(),
        }
    }

    pub(crate) fn parse() -> Result<Args, String> {
        // `cargo bench` appends `--bench` for harness = false targets.
        let raw: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let mut args = Args {
            raw: raw.clone(),
            ..Args::defaults()
        };
        let mut it = raw.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
            }
            match flag.as_str() {
                "--clients" => args.clients = num(&flag, value()?)?,
                "--rate" => args.rate = num(&flag, value()?)?,
                "--duration" => args.duration = num(&flag, value()?)?,
                "--size" => args.size = num(&flag, value()?)?,
                "--topics" => args.topics = Some(num(&flag, value()?)?),
                "--stall" => args.stall = num(&flag, value()?)?,
                "--stall-at" => args.stall_at = num(&flag, value()?)?,
                "--stall-rcvbuf" => args.stall_rcvbuf = num(&flag, value()?)?,
                "--idle" => args.idle = true,
                "--accept" => args.accept = true,
                "--cutoff" => args.cutoff = Some(num(&flag, value()?)?),
                "--server" => args.server = ServerKind::parse(&value()?)?,
                "--retained" => args.retained = num(&flag, value()?)?,
                "--retained-size" => args.retained_size = num(&flag, value()?)?,
                "--hostile" => args.hostile = true,
                "--flood-frames" => args.flood_frames = num(&flag, value()?)?,
                "--flood-patterns" => args.flood_patterns = num(&flag, value()?)?,
                "--target-flood-ratio" => args.target_flood_ratio = Some(num(&flag, value()?)?),
                "--server-env" => {
                    let kv = value()?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--server-env wants K=V, got {kv}"))?;
                    args.server_env.push((k.to_owned(), v.to_owned()));
                }
                "--pool" => args.pool = num(&flag, value()?)?,
                "--tick-ms" => args.tick_ms = num(&flag, value()?)?,
                "--max-body" => args.max_body = num(&flag, value()?)?,
                "--connect-concurrency" => args.connect_concurrency = num(&flag, value()?)?,
                "--read-buffer" => args.read_buffer = num(&flag, value()?)?,
                "--drain" => args.drain = num(&flag, value()?)?,
                "--label" => args.label = Some(value()?),
                "--target-zero-loss" => args.target_zero_loss = true,
                "--target-no-waits" => args.target_no_waits = true,
                "--target-cpu-us" => args.target_cpu_us = Some(num(&flag, value()?)?),
                "--target-p99-ms" => args.target_p99_ms = Some(num(&flag, value()?)?),
                "--target-rss-kib" => args.target_rss_kib = Some(num(&flag, value()?)?),
                "--target-stall" => args.target_stall = true,
                "--target-events-per-s" => args.target_events_per_s = Some(num(&flag, value()?)?),
                "--throughput" | "--max-rate" => args.throughput = true,
                "--batch" => args.batch = num(&flag, value()?)?,
                "--replicas" => args.replicas = num(&flag, value()?)?,
                "--redis-url" => args.redis_url = Some(value()?),
                "--redis-prefix" => args.redis_prefix = Some(value()?),
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other} (see --help)")),
            }
        }
        if args.clients == 0 && !args.throughput {
            return Err("--clients must be at least 1 (0 only with --throughput)".into());
        }
        let not_positive = |x: f64| x.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater);
        if !args.idle && !args.accept && (not_positive(args.rate) || not_positive(args.duration)) {
            return Err("--rate and --duration must be positive".into());
        }
        if args.stall > args.clients {
            return Err("--stall cannot exceed --clients".into());
        }
        if args.topics == Some(0) || args.pool == 0 || args.connect_concurrency == 0 {
            return Err("--topics, --pool and --connect-concurrency must be at least 1".into());
        }
        if !(0.0..1.0).contains(&args.stall_at) {
            return Err("--stall-at is a fraction in [0, 1)".into());
        }
        if args.read_buffer == 0 {
            args.read_buffer = (2 * args.size + 512).next_power_of_two().clamp(4096, 65536);
        }
        if args.replicas == 0 || args.batch == 0 {
            return Err("--replicas and --batch must be at least 1".into());
        }
        if args.replicas > 1 && args.redis_url.is_none() {
            return Err(
                "--replicas > 1 needs --redis-url: in-process hubs do not share events".into(),
            );
        }
        if args.redis_url.is_none() && args.redis_prefix.is_some() {
            return Err("--redis-prefix needs --redis-url".into());
        }
        if args
            .server_env
            .iter()
            .any(|(k, _)| k == "REDIS_URL" || k == "REDIS_PREFIX")
        {
            return Err("use --redis-url and --redis-prefix, not --server-env REDIS_*".into());
        }
        if args.throughput && (args.idle || args.stall > 0) {
            return Err("--throughput does not combine with --idle or --stall".into());
        }
        if args.hostile && (args.idle || args.throughput || args.stall > 0 || args.replicas > 1) {
            return Err(
                "--hostile does not combine with --idle, --throughput, --stall or --replicas"
                    .into(),
            );
        }
        if args.hostile && args.topics.is_some() {
            return Err("--hostile: every client subscribes to everything (no --topics)".into());
        }
        if args.hostile && (args.flood_frames == 0 || args.flood_patterns == 0) {
            return Err("--flood-frames and --flood-patterns must be at least 1".into());
        }
        if matches!(args.server, ServerKind::Node(_))
            && (args.hostile || args.replicas > 1 || args.redis_url.is_some())
        {
            return Err(
                "--server node:... does not combine with --hostile, --replicas or --redis-url \
                 (a peer has no subscribe frames and no backplane)"
                    .into(),
            );
        }
        if args.accept
            && (args.idle || args.hostile || args.throughput || args.stall > 0 || args.replicas > 1)
        {
            return Err(
                "--accept does not combine with --idle, --hostile, --throughput, --stall or --replicas"
                    .into(),
            );
        }
        if let Some(cutoff) = args.cutoff {
            if args.idle || args.accept || args.hostile || args.throughput {
                return Err(
                    "--cutoff is for the rate mode (not --idle, --accept, --hostile, --throughput)"
                        .into(),
                );
            }
            if not_positive(cutoff) || cutoff < args.duration {
                return Err("--cutoff must be at least --duration".into());
            }
        }
        if args.retained > 0 && args.retained_size < 16 {
            return Err("--retained-size must be at least 16".into());
        }
        if args.redis_url.is_some() && args.redis_prefix.is_none() {
            args.redis_prefix = Some(format!("bench:{}:{}:", std::process::id(), wall_ns()));
        }
        if let Some(prefix) = &args.redis_prefix {
            if prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_whitespace) {
                return Err("--redis-prefix: 1-64 characters without spaces".into());
            }
        }
        Ok(args)
    }

    pub(crate) fn server_env(&self, name: &str) -> Option<&str> {
        self.server_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn command_line(&self) -> String {
        let mut line = String::from("cargo bench --bench loadgen --");
        for a in &self.raw {
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$#&;|<>*?()".contains(c))
            {
                let _ = write!(line, " '{}'", a.replace('\'', r"'\''"));
            } else {
                let _ = write!(line, " {a}");
            }
        }
        line
    }

    /// Which replica client `idx` connects to.
    pub(crate) fn replica_of(&self, idx: usize) -> usize {
        idx % self.replicas
    }

    /// "in-process hub" or "Redis", for titles and the result line.
    pub(crate) fn hub_name(&self) -> &'static str {
        if self.redis_url.is_some() {
            "redis"
        } else {
            "in-process"
        }
    }

    pub(crate) fn topic(&self, event_index: u64) -> usize {
        self.topics.map_or(0, |t| (event_index % t as u64) as usize)
    }

    pub(crate) fn topic_name(&self, topic: usize) -> String {
        match self.topics {
            Some(_) => format!("bench/{topic}"),
            None => "bench/load".to_owned(),
        }
    }
}

// ---------------------------------------------------------------- latency histogram

/// `--server`: what runs under test.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ServerKind {
    Switchyard,
    /// A peer server: `node SCRIPT` (benches/peers/).
    Node(PathBuf),
}

impl ServerKind {
    pub(crate) fn parse(text: &str) -> Result<ServerKind, String> {
        match text.split_once(':') {
            None if text == "switchyard" => Ok(ServerKind::Switchyard),
            Some(("node", script)) if !script.is_empty() => {
                Ok(ServerKind::Node(PathBuf::from(script)))
            }
            _ => Err(format!(
                "--server wants `switchyard` or `node:SCRIPT`, got `{text}`"
            )),
        }
    }

    /// For titles: "switchyard" or the script's file name.
    pub(crate) fn name(&self) -> String {
        match self {
            ServerKind::Switchyard => "switchyard".into(),
            ServerKind::Node(script) => format!(
                "node {}",
                script.file_name().map_or_else(
                    || script.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ),
        }
    }
}
