//! The run's own Redis connection: INFO figures and deleting the run's keys.

use super::*;

/// What INFO says about the Redis server, for the cost of the backplane.
#[derive(Clone, Default)]
pub(crate) struct RedisInfo {
    /// used_cpu_user + used_cpu_sys, seconds.
    pub(crate) cpu: (f64, f64),
    /// cmdstat_evalsha (calls, usec) plus cmdstat_eval.
    pub(crate) scripts: (u64, u64),
    /// cmdstat_publish (calls, usec): the scripts' PUBLISH calls.
    pub(crate) publish: (u64, u64),
    /// Connected clients (all of them, not only ours).
    pub(crate) clients: u64,
}

pub(crate) async fn redis_connection(
    url: &str,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "redis: connect timed out".to_owned())?
    .map_err(|e| format!("redis: {e}"))
}

pub(crate) async fn redis_info(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Option<RedisInfo> {
    let text: String = redis::cmd("INFO")
        .arg("all")
        .query_async(connection)
        .await
        .ok()?;
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let float = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cmdstat = |name: &str| -> (u64, u64) {
        let Some(v) = field(name) else { return (0, 0) };
        let get = |key: &str| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (get("calls"), get("usec"))
    };
    let (evalsha, eval) = (cmdstat("cmdstat_evalsha"), cmdstat("cmdstat_eval"));
    Some(RedisInfo {
        cpu: (float("used_cpu_user"), float("used_cpu_sys")),
        scripts: (evalsha.0 + eval.0, evalsha.1 + eval.1),
        publish: cmdstat("cmdstat_publish"),
        clients: field("connected_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

pub(crate) async fn scan_keys(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .map_err(|e| format!("redis SCAN: {e}"))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix`: (deleted, still there afterwards).
pub(crate) async fn redis_cleanup(url: &str, prefix: &str) -> Result<(u64, u64), String> {
    let mut connection = redis_connection(url).await?;
    // the prefix is literal: escape MATCH's glob characters
    let mut pattern = String::new();
    for c in prefix.chars() {
        if "*?[]\\".contains(c) {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let keys = scan_keys(&mut connection, &pattern).await?;
    let mut deleted = 0u64;
    for chunk in keys.chunks(500) {
        let n: u64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("redis DEL: {e}"))?;
        deleted += n;
    }
    let left = scan_keys(&mut connection, &pattern).await?.len() as u64;
    Ok((deleted, left))
}

// ---------------------------------------------------------------- the server
