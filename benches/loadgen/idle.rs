//! `--idle`: connect, hold, report RSS per connection.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn idle_run(
    args: &Args,
    servers: &[Server],
    table: &mut Table,
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    connected: usize,
    per_conn: impl Fn(u64) -> f64,
) -> i32 {
    let cpu0 = CpuWindow::now(servers);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let cpu1 = CpuWindow::now(servers);
    let rss_end = rss_sum(servers);
    let secs = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    table.row("idle hold", format!("{:.1} s", secs));
    table.row(
        "server RSS",
        format!(
            "before connect {} / after connect {} / after hold {}{}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end),
            if servers.len() > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
        ),
    );
    let at_connect = per_conn(rss_connected);
    table.row(
        "server RSS per connection",
        format!(
            "{at_connect:.2} KiB after connect, {:.2} KiB after hold  ((RSS - before) / {connected})",
            per_conn(rss_end)
        ),
    );
    let server_cpu =
        (cpu1.server.0 + cpu1.server.1 - cpu0.server.0 - cpu0.server.1) as f64 / clk_tck as f64;
    table.row(
        "server CPU while idle",
        format!(
            "{:.2} s over {secs:.1} s ({:.1} % of a core)",
            server_cpu,
            100.0 * server_cpu / secs
        ),
    );
    if let Some(target) = args.target_rss_kib {
        table.target(
            &format!("RSS per connection <= {target} KiB"),
            connected > 0 && at_connect <= target,
            format!("{at_connect:.2} KiB"),
        );
    }
    table.result("mode", "idle".into());
    table.result("rss_per_conn_kib", format!("{at_connect:.2}"));
    0
}
