//! `--accept`: how many WebSocket connections per second the server takes
//! (TCP connect + upgrade + hello received), and its CPU per connection.
//!
//! Opens `--clients` connections as fast as it can with `--connect-concurrency`
//! in flight: a new one starts as soon as one has its hello. No retries: a
//! connection without a hello within 30 s counts as failed. Every connection
//! stays open until the measurement ends (so the window holds accepts only,
//! no teardown), then all are dropped before the server stops. Both processes
//! hold one fd per connection: keep --clients under the fd limit (20,000 here).

use super::*;

/// What one connection needs to count: the hello, within 30 s.
async fn open_one(ctx: &Ctx, idx: usize) -> Result<Ws, String> {
    let mut ws = connect_ws(ctx, idx).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if hello_info(text.as_bytes()).is_some() => Ok(ws),
        Ok(Some(Ok(other))) => Err(format!("first frame is not a hello: {other:?}")),
        Ok(Some(Err(e))) => Err(format!("reading the hello: {e}")),
        Ok(None) => Err("closed before the hello".into()),
        Err(_) => Err("no hello within 30 s".into()),
    }
}

pub(crate) async fn accept_run(
    args: &Args,
    servers: &[Server],
    ctx: &Arc<Ctx>,
    table: &mut Table,
    clk_tck: u64,
    rss_before: u64,
) -> i32 {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let times = Arc::new(Mutex::new(Hist::new()));
    let cpu0 = CpuWindow::now(servers);
    let mut handles = Vec::with_capacity(args.clients);
    for idx in 0..args.clients {
        // a slot frees when a connection has its hello (or failed)
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (ctx, times) = (ctx.clone(), times.clone());
        handles.push(tokio::spawn(async move {
            let started = Instant::now();
            let ws = open_one(&ctx, idx).await;
            drop(permit);
            if ws.is_ok() {
                let us = started.elapsed().as_micros() as u64;
                times.lock().unwrap().record(us);
            }
            ws
        }));
    }
    let mut open = Vec::with_capacity(args.clients);
    let mut failed = 0usize;
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok(Ok(ws)) => open.push(ws),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    let cpu1 = CpuWindow::now(servers);
    let accepted = open.len();
    let secs = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_open = rss_sum(servers);
    drop(open); // every connection closes here (FIN), before the server stops

    let ticks = |a: u64, b: u64| (b - a) as f64 / clk_tck as f64;
    let (server_user, server_sys) = (
        ticks(cpu0.server.0, cpu1.server.0),
        ticks(cpu0.server.1, cpu1.server.1),
    );
    let server_cpu = server_user + server_sys;
    let my_cpu = ticks(cpu0.me.0, cpu1.me.0) + ticks(cpu0.me.1, cpu1.me.1);
    let rate = if secs > 0.0 {
        accepted as f64 / secs
    } else {
        0.0
    };
    let per_accept_us = if accepted > 0 {
        server_cpu * 1e6 / accepted as f64
    } else {
        f64::NAN
    };
    let rss_per_conn = if accepted > 0 {
        rss_open.saturating_sub(rss_before) as f64 / accepted as f64
    } else {
        0.0
    };
    let (busy, total) = (
        cpu1.machine.0 - cpu0.machine.0,
        cpu1.machine.1 - cpu0.machine.1,
    );
    let machine_busy = if total > 0 {
        100.0 * busy as f64 / total as f64
    } else {
        0.0
    };
    let others = (busy as f64 / clk_tck as f64 - server_cpu - my_cpu).max(0.0);
    let others_pct = if total > 0 {
        100.0 * others / (total as f64 / clk_tck as f64)
    } else {
        0.0
    };

    table.row(
        "connections",
        format!(
            "{accepted} accepted (hello received), {failed} failed, of {} opened with {} in flight; \
             kept open until the end of the window, no retries",
            args.clients, args.connect_concurrency
        ),
    );
    if let Some(e) = &first_error {
        table.row("first failure", e.clone());
    }
    table.row(
        "accept rate",
        format!("{rate:.0} connections/s ({accepted} in {secs:.2} s, first connect to last hello)"),
    );
    table.row("connect -> hello", times.lock().unwrap().summary_ms());
    table.row(
        "server CPU",
        format!(
            "{server_cpu:.2} s (user {server_user:.2} + sys {server_sys:.2}) = {:.0} % of a core; \
             {per_accept_us:.1} us per accepted connection",
            100.0 * server_cpu / secs.max(1e-9)
        ),
    );
    table.row(
        "server RSS",
        format!(
            "before {} / with all open {}: {rss_per_conn:.2} KiB per connection",
            kib(rss_before),
            kib(rss_open)
        ),
    );
    table.row(
        "loadgen CPU",
        format!(
            "{my_cpu:.2} s = {:.0} % of a core (client handshakes: on 2 cores the client side \
             competes with the server)",
            100.0 * my_cpu / secs.max(1e-9)
        ),
    );
    table.row(
        "machine",
        format!(
            "{machine_busy:.0} % busy over {} cores; other processes {others:.2} s = {others_pct:.0} %{}",
            cores(),
            if others_pct > 10.0 {
                " — NOT A QUIET MACHINE: the figures above are disturbed"
            } else {
                ""
            }
        ),
    );
    for (k, v) in [
        ("mode", "accept".to_owned()),
        ("accepted", accepted.to_string()),
        ("failed", failed.to_string()),
        ("accepts_per_s", format!("{rate:.0}")),
        ("server_cpu_s", format!("{server_cpu:.2}")),
        ("cpu_us_per_accept", format!("{per_accept_us:.2}")),
        ("rss_per_conn_kib", format!("{rss_per_conn:.2}")),
        ("loadgen_cpu_s", format!("{my_cpu:.2}")),
        ("machine_busy_pct", format!("{machine_busy:.0}")),
        ("others_pct", format!("{others_pct:.0}")),
    ] {
        table.result(k, v);
    }
    i32::from(failed > 0)
}
