//! `--hostile`: a quiet phase, then the same schedule under a subscribe flood.

use super::*;

/// `n` in base 36: short, distinct pattern levels.
pub(crate) fn base36(mut n: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().map(|&d| char::from(d)).collect()
}

/// The flooder's subscribe frames: `frames` frames of `patterns` distinct,
/// valid patterns `flood/<n>/+/x` each (n counts on across the frames, in
/// base 36 so that 3,600 of them fit a 64 KiB frame). None matches a topic
/// anyone publishes to.
pub(crate) fn flood_frames(frames: usize, patterns: usize) -> Vec<String> {
    (0..frames)
        .map(|f| {
            let mut s = String::with_capacity(32 + patterns * 17);
            s.push_str(r#"{"type":"subscribe","topics":["#);
            for k in 0..patterns {
                if k > 0 {
                    s.push(',');
                }
                let _ = write!(s, r#""flood/{}/+/x""#, base36(f * patterns + k));
            }
            s.push_str("]}");
            s
        })
        .collect()
}

/// What the flooder saw; times are from the moment it started sending.
#[derive(Default)]
pub(crate) struct FloodOutcome {
    /// Frames written, and when the last write returned.
    pub(crate) sent: usize,
    pub(crate) all_sent: Option<Duration>,
    pub(crate) send_error: Option<String>,
    /// Answers: `subscribed` and `error` frames, and the first error's text.
    pub(crate) subscribed: usize,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    /// When the last answer arrived.
    pub(crate) last_answer: Option<Duration>,
    /// Event frames (it is subscribed to everything, like any anonymous
    /// client that names no topics) and anything else.
    pub(crate) events: u64,
    pub(crate) other: usize,
    /// See CLOSE_*; 0 while open.
    pub(crate) close: u32,
}

/// The flooder's connection: plain `client_async`, so no Origin header and
/// no token; no `topics` (everything). Returns once its hello arrived.
pub(crate) async fn connect_flooder(ctx: &Ctx) -> Result<Ws, String> {
    let server = ctx.servers[0];
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{server}{}", ctx.ws_path);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if hello_info(text.as_bytes()).is_some() => Ok(ws),
        _ => Err("no hello frame within 30 s".into()),
    }
}

/// Sends every frame as fast as the socket takes them from `at` on, and
/// reads (and classifies) everything the server answers, until aborted.
pub(crate) fn start_flood(
    ws: Ws,
    frames: Vec<String>,
    at: Instant,
    outcome: &Arc<Mutex<FloodOutcome>>,
) -> [tokio::task::JoinHandle<()>; 2] {
    use futures_util::SinkExt;
    let (mut sink, mut stream) = ws.split();
    let reader = {
        let outcome = outcome.clone();
        tokio::spawn(async move {
            let close = loop {
                let Some(msg) = stream.next().await else {
                    break CLOSE_EOF;
                };
                let text = match msg {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(frame)) => {
                        break frame.map_or(1005, |f| u32::from(u16::from(f.code)))
                    }
                    Ok(_) => continue,
                    Err(_) => break CLOSE_ERROR,
                };
                let b = text.as_bytes();
                let mut o = outcome.lock().unwrap();
                if b.starts_with(EVENT_PREFIX) {
                    o.events += 1;
                } else if b.starts_with(br#"{"type":"subscribed""#) {
                    o.subscribed += 1;
                    o.last_answer = Some(at.elapsed());
                } else if b.starts_with(br#"{"type":"error""#) {
                    o.errors += 1;
                    o.last_answer = Some(at.elapsed());
                    if o.first_error.is_none() {
                        let message = serde_json::from_slice::<serde_json::Value>(b)
                            .ok()
                            .and_then(|v| v["message"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        o.first_error = Some(message.chars().take(200).collect());
                    }
                } else {
                    o.other += 1;
                }
            };
            outcome.lock().unwrap().close = close;
        })
    };
    let writer = {
        let outcome = outcome.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            for frame in frames {
                if let Err(e) = sink.send(Message::text(frame)).await {
                    outcome.lock().unwrap().send_error = Some(e.to_string());
                    break;
                }
                outcome.lock().unwrap().sent += 1;
            }
            outcome.lock().unwrap().all_sent = Some(at.elapsed());
            // keep the connection open until the run aborts this task
            std::future::pending::<()>().await;
        })
    };
    [reader, writer]
}

/// One phase of `--hostile`: the open-loop schedule for `--duration` from
/// `start` (nothing sent or waited for after `--duration + --drain`), then
/// up to `--drain` s for every connected client to have the last seq.
pub(crate) struct Phase {
    pub(crate) report: PubReport,
    pub(crate) cpu0: CpuWindow,
    pub(crate) cpu1: CpuWindow,
    /// Connected clients without the phase's last seq at the end.
    pub(crate) behind: usize,
    pub(crate) rss_end: u64,
}

pub(crate) async fn hostile_phase(
    args: &Args,
    servers: &[Server],
    ctx: &Ctx,
    start: Instant,
) -> Phase {
    let cutoff = start + Duration::from_secs_f64(args.duration + args.drain);
    tokio::time::sleep_until(start).await;
    let cpu0 = CpuWindow::now(servers);
    let report = publish_on_own_thread(PubConfig {
        args: args.clone(),
        servers: servers.iter().map(|s| s.addr).collect(),
        start,
        cutoff: Some(cutoff),
        log: true,
    })
    .await;
    let last = report.accepted.iter().map(|a| a.0).max().unwrap_or(0);
    let behind = || {
        ctx.stats
            .iter()
            .filter(|s| {
                s.hello_seq.load(Relaxed) != NO_HELLO
                    && s.close.load(Relaxed) == 0
                    && s.last_seq.load(Relaxed) < last
            })
            .count()
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while behind() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Phase {
        report,
        cpu0,
        cpu1: CpuWindow::now(servers),
        behind: behind(),
        rss_end: rss_sum(servers),
    }
}

/// A phase's CPU: (text, share of the machine other processes used, %).
pub(crate) fn phase_cpu(p: &Phase, clk_tck: u64) -> (String, f64) {
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / clk_tck as f64;
    let (a, b) = (&p.cpu0, &p.cpu1);
    let window = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let server = secs(a.server.0, b.server.0) + secs(a.server.1, b.server.1);
    let me = secs(a.me.0, b.me.0) + secs(a.me.1, b.me.1);
    let busy = b.machine.0.saturating_sub(a.machine.0);
    let total = b.machine.1.saturating_sub(a.machine.1).max(1);
    let busy_pct = 100.0 * busy as f64 / total as f64;
    let others = (busy as f64 / clk_tck as f64 - server - me).max(0.0);
    let others_pct = 100.0 * others / (total as f64 / clk_tck as f64);
    (
        format!(
            "server {server:.2} s = {:.0} % of a core, loadgen {me:.2} s over {window:.1} s; \
             machine {busy_pct:.0} % busy over {} cores, other processes {others_pct:.0} % of it{}",
            100.0 * server / window,
            cores(),
            if others_pct > 10.0 {
                " — NOT A QUIET MACHINE"
            } else {
                ""
            }
        ),
        others_pct,
    )
}

/// `--hostile`: a quiet phase, then the same phase while one anonymous
/// WebSocket client floods subscribe frames; publish RTT p50/p99 of both,
/// how the flooder was answered, and whether the clients lost events.
pub(crate) async fn hostile_run(
    args: &Args,
    servers: &[Server],
    ctx: &Arc<Ctx>,
    table: &mut Table,
    clk_tck: u64,
    rss_connected: u64,
) -> i32 {
    let frames = flood_frames(args.flood_frames, args.flood_patterns);
    let largest = frames.iter().map(String::len).max().unwrap_or(0);
    let limit: usize = args
        .server_env("MAX_MESSAGE_BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(65_536);
    if largest > limit {
        table.row(
            "flood",
            format!(
                "NOT RUN: a frame of {largest} B exceeds MAX_MESSAGE_BYTES ({limit}): \
                 fewer --flood-patterns"
            ),
        );
        return 1;
    }
    let live = ctx.connected.load(Relaxed);
    table.row(
        "offered load",
        format!(
            "two phases of {} s, each {} ev/s x {} B data to {live} clients subscribed to \
             everything: quiet, then the same under flood; nothing is sent or awaited after \
             {} s from a phase's start",
            args.duration,
            args.rate,
            args.size,
            args.duration + args.drain
        ),
    );

    // ---- quiet
    let quiet = hostile_phase(
        args,
        servers,
        ctx,
        Instant::now() + Duration::from_millis(300),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ---- flood: the flooder connects first, floods a little into the phase
    let ws = match connect_flooder(ctx).await {
        Ok(ws) => ws,
        Err(e) => {
            table.row("flooder", format!("could not connect: {e}"));
            return 1;
        }
    };
    let lead = Duration::from_millis(500);
    let start = Instant::now() + lead;
    // latencies of events published from here on go to phase 1
    ctx.stall_wall_ns
        .store(wall_ns() + lead.as_nanos() as u64, Relaxed);
    let flood_offset = Duration::from_secs_f64(args.duration / 10.0).min(Duration::from_secs(1));
    let flood_at = start + flood_offset;
    let outcome = Arc::new(Mutex::new(FloodOutcome::default()));
    let flooder = start_flood(ws, frames, flood_at, &outcome);
    let flood = hostile_phase(args, servers, ctx, start).await;
    // up to --drain s more for the answers to the rest of the flood
    let answers_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let flood_over = || {
        let o = outcome.lock().unwrap();
        o.subscribed + o.errors >= args.flood_frames || o.close != 0 || o.send_error.is_some()
    };
    while !flood_over() && Instant::now() < answers_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after_answers = rss_sum(servers);
    for task in &flooder {
        task.abort();
    }
    let o = std::mem::take(&mut *outcome.lock().unwrap());

    // ---- the flood and its answers
    table.row(
        "flood",
        format!(
            "{} subscribe frames x {} distinct patterns flood/<n>/+/x ({} in all), largest frame \
             {largest} B, from one anonymous WebSocket client (no Origin, no token, no topics), \
             starting {:.1} s into the flood phase",
            args.flood_frames,
            args.flood_patterns,
            args.flood_frames * args.flood_patterns,
            flood_offset.as_secs_f64()
        ),
    );
    table.row(
        "flood sent",
        format!(
            "{}/{} frames written{}{}",
            o.sent,
            args.flood_frames,
            o.all_sent.map_or(String::new(), |d| format!(
                " in {} ms",
                ms(d.as_micros() as u64)
            )),
            o.send_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (write failed: {e})"))
        ),
    );
    table.row(
        "flooder answered",
        format!(
            "{}/{} frames answered{}: {} subscribed, {} error{}; last answer {}; {} events, \
             {} other frames; connection at the end: {}",
            o.subscribed + o.errors,
            args.flood_frames,
            if o.subscribed + o.errors < args.flood_frames {
                format!(
                    " (the rest still unanswered {} s after the flood phase)",
                    args.drain
                )
            } else {
                String::new()
            },
            o.subscribed,
            o.errors,
            o.first_error
                .as_ref()
                .map_or(String::new(), |m| format!(" (first: {m:?})")),
            o.last_answer.map_or("none".into(), |d| format!(
                "{:.2} s after the first frame",
                d.as_secs_f64()
            )),
            o.events,
            o.other,
            if o.close == 0 {
                "open".to_owned()
            } else {
                format!("CLOSED ({})", close_name(o.close))
            }
        ),
    );

    // ---- publishes, quiet vs flood
    let published_text = |p: &PubReport| {
        format!(
            "{}/{} accepted, {} failed ({} unanswered at the cutoff), {} never sent; \
             {} of {} requests had to wait",
            p.accepted.len(),
            p.planned,
            p.failed_events,
            p.unanswered_events,
            p.not_sent,
            p.had_to_wait,
            p.requests
        )
    };
    let rtt_text = |p: &PubReport| p.rtt.as_ref().map_or("-".into(), |h| h.summary_ms());
    table.row("quiet: published", published_text(&quiet.report));
    table.row("quiet: publish RTT", rtt_text(&quiet.report));
    table.row("flood: published", published_text(&flood.report));
    table.row(
        "flood: publish RTT",
        rtt_text(&flood.report)
            + if flood.report.unanswered > 0 {
                "  (unanswered ones count at their age at the cutoff: a lower bound)"
            } else {
                ""
            },
    );
    // the publishes sent while the server was answering the flood
    let window_end = match (o.last_answer, o.sent == args.flood_frames) {
        (Some(d), true) if o.subscribed + o.errors >= args.flood_frames => flood_at + d,
        _ => flood.cpu1.at,
    };
    let mut in_window = Hist::new();
    for &(sent, rtt) in flood.report.log.iter().flatten() {
        if sent >= flood_at && sent <= window_end {
            in_window.record(rtt.as_micros() as u64);
        }
    }
    table.row(
        "flood: RTT while answering",
        format!(
            "publishes sent between the first flood frame and its last answer ({:.2} s): {}",
            window_end.saturating_duration_since(flood_at).as_secs_f64(),
            in_window.summary_ms()
        ),
    );
    let (lat_quiet, lat_flood) = (Hist::collect(None, Some(0)), Hist::collect(None, Some(1)));
    table.row("quiet: publish->receive", lat_quiet.summary_ms());
    table.row("flood: publish->receive", lat_flood.summary_ms());

    // ---- the clients, over both phases
    let mut seqs: Vec<u64> = quiet
        .report
        .accepted
        .iter()
        .chain(&flood.report.accepted)
        .map(|a| a.0)
        .collect();
    seqs.sort_unstable();
    let mut total = Tally::default();
    for s in &ctx.stats {
        let hello = s.hello_seq.load(Relaxed);
        if hello == NO_HELLO {
            continue;
        }
        let received = s.received.load(Relaxed);
        total.clients += 1;
        total.delivered += received;
        *total.closes.entry(s.close.load(Relaxed)).or_default() += 1;
        let want = (seqs.len() - seqs.partition_point(|&q| q <= hello)) as u64;
        let dups = s.dups.load(Relaxed);
        let lost = want.saturating_sub(received - dups);
        total.expected += want;
        total.missing += lost;
        total.lossy_clients += usize::from(lost > 0);
        total.gaps += s.gaps.load(Relaxed);
        total.gap_seqs += s.gap_seqs.load(Relaxed);
        total.dups += dups;
    }
    table.row(
        "loss (both phases)",
        format!(
            "{}; {} gaps ({} seqs skipped), {} duplicates{}",
            total.loss_text(),
            total.gaps,
            total.gap_seqs,
            total.dups,
            if quiet.behind + flood.behind > 0 {
                format!(
                    "; still behind at drain end: {} after quiet, {} after flood (count as missing)",
                    quiet.behind, flood.behind
                )
            } else {
                String::new()
            }
        ),
    );
    table.row("clients at end", total.closes_text());
    let (quiet_cpu, quiet_others) = phase_cpu(&quiet, clk_tck);
    let (flood_cpu, flood_others) = phase_cpu(&flood, clk_tck);
    table.row("quiet: CPU", quiet_cpu);
    table.row("flood: CPU", flood_cpu);
    table.row(
        "server RSS",
        format!(
            "after connect {} / after quiet {} / after flood phase {} / after the flood's answers {}",
            kib(rss_connected),
            kib(quiet.rss_end),
            kib(flood.rss_end),
            kib(rss_after_answers)
        ),
    );

    // ---- targets
    let p = |r: &PubReport, q: f64| r.rtt.as_ref().and_then(|h| h.quantile(q));
    let (q99, f99) = (p(&quiet.report, 0.99), p(&flood.report, 0.99));
    let ratio = match (q99, f99) {
        (Some(q), Some(f)) => Some(f as f64 / q.max(1) as f64),
        _ => None,
    };
    let complete = flood.report.failed_events == 0 && flood.report.not_sent == 0;
    if let Some(target) = args.target_flood_ratio {
        table.target(
            &format!("publish RTT p99 under flood <= {target}x quiet, every publish answered"),
            complete && ratio.is_some_and(|r| r <= target),
            match (q99, f99, ratio) {
                (Some(q), Some(f), Some(r)) => format!(
                    "quiet {} ms, flood {} ms = {r:.2}x{}",
                    ms(q),
                    ms(f),
                    if complete {
                        String::new()
                    } else {
                        format!(
                            "; {} events failed, {} never sent",
                            flood.report.failed_events, flood.report.not_sent
                        )
                    }
                ),
                _ => "no samples".into(),
            },
        );
    }
    let failed = quiet.report.failed_events + flood.report.failed_events;
    let zero_loss = total.missing == 0 && total.gaps == 0 && total.dups == 0 && failed == 0;
    if args.target_zero_loss {
        table.target(
            "zero loss (both phases)",
            zero_loss,
            format!(
                "{} missing, {} gaps, {} dups, {failed} publish failures",
                total.missing, total.gaps, total.dups
            ),
        );
    }
    let us = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let results = [
        ("mode", "hostile".to_owned()),
        ("clients", live.to_string()),
        ("quiet_published", quiet.report.accepted.len().to_string()),
        ("flood_published", flood.report.accepted.len().to_string()),
        ("planned", flood.report.planned.to_string()),
        ("quiet_rtt_p50_us", us(p(&quiet.report, 0.5))),
        ("quiet_rtt_p99_us", us(q99)),
        ("flood_rtt_p50_us", us(p(&flood.report, 0.5))),
        ("flood_rtt_p99_us", us(f99)),
        (
            "flood_ratio",
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
        ),
        ("flood_subscribed", o.subscribed.to_string()),
        ("flood_errors", o.errors.to_string()),
        (
            "flood_last_answer_s",
            o.last_answer
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
        ),
        ("flood_closed", u8::from(o.close != 0).to_string()),
        ("missing", total.missing.to_string()),
        ("zero_loss", u8::from(zero_loss).to_string()),
        ("others_pct_quiet", format!("{quiet_others:.0}")),
        ("others_pct_flood", format!("{flood_others:.0}")),
    ];
    for (k, v) in results {
        table.result(k, v);
    }
    0
}
