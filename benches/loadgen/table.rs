//! The report: one table, and the `result:` line for scripts.

use super::*;

pub(crate) fn kib(v: u64) -> String {
    if v >= 10 * 1024 {
        format!("{:.1} MiB", v as f64 / 1024.0)
    } else {
        format!("{v} KiB")
    }
}

// ---------------------------------------------------------------- output

pub(crate) struct Table {
    pub(crate) title: String,
    pub(crate) head: Vec<String>,
    pub(crate) rows: Vec<(String, String)>,
    pub(crate) targets: Vec<String>,
    /// `key=value` pairs of the last line, for scripts.
    pub(crate) results: Vec<(String, String)>,
}

/// A Redis URL without its password, for printing.
pub(crate) fn masked_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Table {
    pub(crate) fn new(args: &Args, servers: &[Server], ctx: &Ctx, fd_limit: u64) -> Table {
        let hub = match &args.redis_url {
            Some(_) => format!(", Redis, {} replica(s)", args.replicas),
            None => String::new(),
        };
        let title = args.label.clone().unwrap_or_else(|| {
            let server = match args.server {
                ServerKind::Switchyard => String::new(),
                ServerKind::Node(_) => format!(" — {}", args.server.name()),
            };
            let title = if args.accept {
                format!(
                    "accept rate, {} connections, {} in flight",
                    args.clients, args.connect_concurrency
                )
            } else if args.idle {
                format!("{} idle connections{hub}", args.clients)
            } else if args.throughput {
                format!(
                    "publish throughput, {} B events in batches of {}, {} subscribers{hub}",
                    args.size, args.batch, args.clients
                )
            } else {
                format!(
                    "{} clients x {} ev/s x {} B{}",
                    args.clients,
                    args.rate,
                    args.size,
                    if args.stall > 0 {
                        format!(", {} stalled", args.stall)
                    } else {
                        String::new()
                    }
                ) + &hub
            };
            title + &server
        });
        let extra = args
            .server_env
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>();
        let redis = match (&args.redis_url, &args.redis_prefix) {
            (Some(url), Some(prefix)) => {
                format!(" REDIS_URL={} REDIS_PREFIX={prefix}", masked_url(url))
            }
            _ => String::new(),
        };
        let mut head = vec![format!("command: {}", args.command_line())];
        for (i, server) in servers.iter().enumerate() {
            head.push(format!(
                "{}: {} pid {} on {} (HOST=127.0.0.1 RUST_LOG=warn MAX_CONNECTIONS={}{extra}{redis})",
                if servers.len() > 1 {
                    format!("replica {i}")
                } else {
                    "server".to_owned()
                },
                server.bin.display(),
                server.pid,
                server.addr,
                (args.clients * 2).max(1_000_000)
            ));
        }
        head.push(format!(
            "loadgen: 2 tokio workers + 1 publisher thread, fd limit {fd_limit}, read buffer {} B/client, {} cores",
            ctx.args.read_buffer,
            cores()
        ));
        Table {
            title,
            head,
            rows: Vec::new(),
            targets: Vec::new(),
            results: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, name: &str, value: String) {
        self.rows.push((name.to_owned(), value));
    }

    pub(crate) fn result(&mut self, key: &str, value: String) {
        self.results.push((key.to_owned(), value));
    }

    pub(crate) fn target(&mut self, name: &str, ok: bool, measured: String) {
        self.targets.push(format!(
            "{}  {name}  (measured: {measured})",
            if ok { "PASS" } else { "MISS" }
        ));
    }

    pub(crate) fn print(&self) {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "\n=== switchyard loadgen: {} ===", self.title);
        for h in &self.head {
            let _ = writeln!(out, "{h}");
        }
        let _ = writeln!(out, "{}", "-".repeat(78));
        for (name, value) in &self.rows {
            let _ = writeln!(out, "{name:<width$}  {value}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "{}", "-".repeat(78));
            for t in &self.targets {
                let _ = writeln!(out, "target: {t}");
            }
        }
        if !self.results.is_empty() {
            let line = self
                .results
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace(char::is_whitespace, "_")))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(out, "result: {line}");
        }
        print!("{out}");
    }
}

// ---------------------------------------------------------------- self-check
