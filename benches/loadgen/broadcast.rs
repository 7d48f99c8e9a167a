//! The default scenario (and `--stall`, `--replicas`, `--throughput`): clients, a schedule, the loss / latency / CPU table.

use super::*;

/// Loss, gaps and duplicates of a set of clients (one replica's, or all).
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) clients: usize,
    pub(crate) expected: u64,
    pub(crate) missing: u64,
    pub(crate) lossy_clients: usize,
    pub(crate) gaps: u64,
    pub(crate) gap_seqs: u64,
    pub(crate) dups: u64,
    pub(crate) delivered: u64,
    pub(crate) frame_bytes: u64,
    pub(crate) behind: usize,
    pub(crate) closes: BTreeMap<u32, usize>,
}

impl Tally {
    pub(crate) fn add(&mut self, o: &Tally) {
        self.clients += o.clients;
        self.expected += o.expected;
        self.missing += o.missing;
        self.lossy_clients += o.lossy_clients;
        self.gaps += o.gaps;
        self.gap_seqs += o.gap_seqs;
        self.dups += o.dups;
        self.delivered += o.delivered;
        self.frame_bytes += o.frame_bytes;
        self.behind += o.behind;
        for (code, n) in &o.closes {
            *self.closes.entry(*code).or_default() += n;
        }
    }

    pub(crate) fn loss_text(&self) -> String {
        format!(
            "{} missing of {} expected ({:.4} %), {} clients lost events",
            self.missing,
            self.expected,
            if self.expected > 0 {
                100.0 * self.missing as f64 / self.expected as f64
            } else {
                0.0
            },
            self.lossy_clients
        )
    }

    pub(crate) fn closes_text(&self) -> String {
        self.closes
            .iter()
            .map(|(code, n)| format!("{}: {n}", close_name(*code)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Clients whose connection ended.
    pub(crate) fn closed(&self) -> usize {
        self.closes
            .iter()
            .filter(|(code, _)| **code != 0)
            .map(|(_, n)| n)
            .sum()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn broadcast_run(
    args: &Args,
    servers: &[Server],
    ctx: &Arc<Ctx>,
    schedule_tx: &watch::Sender<Option<Schedule>>,
    table: &mut Table,
    handles: &[tokio::task::JoinHandle<()>],
    rss_before: u64,
    rss_connected: u64,
    clk_tck: u64,
    per_conn: impl Fn(u64) -> f64,
    mut redis: Option<&mut redis::aio::MultiplexedConnection>,
) -> i32 {
    // ---- schedule
    let start = Instant::now() + Duration::from_millis(300);
    let run_len = Duration::from_secs_f64(args.duration);
    let stalling = args.stall > 0;
    let stall_offset = Duration::from_secs_f64(args.duration * args.stall_at);
    let plan = Schedule {
        stall_at: start + stall_offset,
        resume_at: start + run_len,
    };
    if stalling {
        let start_wall = wall_ns() + 300_000_000;
        ctx.stall_wall_ns
            .store(start_wall + stall_offset.as_nanos() as u64, Relaxed);
    }
    let _ = schedule_tx.send(Some(plan));

    // RSS (summed over the replicas) every 100 ms: (seconds since start, KiB)
    let sampling = Arc::new(AtomicU32::new(1));
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let (sampling, samples) = (sampling.clone(), samples.clone());
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut every = tokio::time::interval(Duration::from_millis(100));
            while sampling.load(Relaxed) == 1 {
                every.tick().await;
                let rss: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
                samples
                    .lock()
                    .unwrap()
                    .push((start.elapsed().as_secs_f64(), rss));
            }
        })
    };

    let redis0 = match redis.as_deref_mut() {
        Some(connection) => redis_info(connection).await,
        None => None,
    };
    tokio::time::sleep_until(start).await;
    let cpu0 = CpuWindow::now(servers);
    let report = publish_on_own_thread(PubConfig {
        args: args.clone(),
        servers: servers.iter().map(|s| s.addr).collect(),
        start,
        cutoff: args
            .cutoff
            .map(|secs| start + Duration::from_secs_f64(secs)),
        log: false,
    })
    .await;
    let publish_end = Instant::now();
    let cpu_pub = CpuWindow::now(servers);
    let redis_pub = match redis.as_deref_mut() {
        Some(connection) => redis_info(connection).await,
        None => None,
    };

    // ---- what each client should have: accepted seqs of its topic(s)
    let n_topics = args.topics.unwrap_or(1);
    let mut seqs_by_topic: Vec<Vec<u64>> = vec![Vec::new(); n_topics];
    for &(seq, topic) in &report.accepted {
        seqs_by_topic[topic].push(seq);
    }
    for v in &mut seqs_by_topic {
        v.sort_unstable();
    }
    let topic_of = |idx: usize| args.topics.map_or(0, |t| idx % t);
    let target_seq = |idx: usize| seqs_by_topic[topic_of(idx)].last().copied().unwrap_or(0);
    let is_behind = |i: usize| {
        let s = &ctx.stats[i];
        !ctx.is_stalled(i)
            && s.hello_seq.load(Relaxed) != NO_HELLO
            && s.close.load(Relaxed) == 0
            && s.last_seq.load(Relaxed) < target_seq(i)
    };

    // ---- drain: every live, non-stalled client has its last seq
    let drain_deadline = publish_end + Duration::from_secs_f64(args.drain);
    loop {
        let behind = (0..args.clients).filter(|&i| is_behind(i)).count();
        if behind == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = CpuWindow::now(servers);
    let redis1 = match redis {
        Some(connection) => redis_info(connection).await,
        None => None,
    };
    let drain_secs = cpu1.at.duration_since(publish_end).as_secs_f64();
    let window = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let rss_end = rss_sum(servers);
    let rss_end_each: Vec<u64> = servers
        .iter()
        .map(|s| rss_kib(s.pid).unwrap_or(0))
        .collect();

    // ---- snapshot the clients, per replica
    let mut tallies: Vec<Tally> = (0..args.replicas).map(|_| Tally::default()).collect();
    for (i, s) in ctx.stats.iter().enumerate() {
        let t = &mut tallies[args.replica_of(i)];
        let received = s.received.load(Relaxed);
        t.delivered += received;
        t.frame_bytes += s.bytes.load(Relaxed);
        let hello = s.hello_seq.load(Relaxed);
        if ctx.is_stalled(i) || hello == NO_HELLO {
            continue;
        }
        t.clients += 1;
        t.behind += usize::from(is_behind(i));
        *t.closes.entry(s.close.load(Relaxed)).or_default() += 1;
        let seqs = &seqs_by_topic[topic_of(i)];
        let want = (seqs.len() - seqs.partition_point(|&q| q <= hello)) as u64;
        let d = s.dups.load(Relaxed);
        let got = received - d;
        t.expected += want;
        let lost = want.saturating_sub(got);
        t.missing += lost;
        t.lossy_clients += usize::from(lost > 0);
        t.gaps += s.gaps.load(Relaxed);
        t.gap_seqs += s.gap_seqs.load(Relaxed);
        t.dups += d;
    }
    let mut total = Tally::default();
    for t in &tallies {
        total.add(t);
    }
    let delivered = total.delivered;
    let frame_avg = if delivered > 0 {
        total.frame_bytes as f64 / delivered as f64
    } else {
        0.0
    };

    // ---- stalled clients: they read again from resume_at, up to 15 s
    let mut stalled_report = Vec::new();
    if stalling {
        for h in handles.iter().take(args.stall) {
            let wait_until = plan.resume_at + Duration::from_secs(16);
            while !h.is_finished() && Instant::now() < wait_until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for s in ctx.stats.iter().take(args.stall) {
            stalled_report.push((
                s.close.load(Relaxed),
                s.seq_at_stall.load(Relaxed),
                s.last_seq.load(Relaxed),
                s.last_t.load(Relaxed),
            ));
        }
    }
    sampling.store(0, Relaxed);
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    // ---- epochs: every hello on every replica, and every receipt, in one
    let (epoch_ok, epoch_text) = {
        let tally = ctx.epochs.lock().unwrap();
        let first: Vec<&str> = tally
            .first
            .iter()
            .map(|e| e.as_deref().unwrap_or("-"))
            .collect();
        // no subscribers (--throughput --clients 0): the receipts alone
        let no_hellos = tally.counts.is_empty();
        let same_first = no_hellos
            || tally
                .first
                .iter()
                .all(|e| e.is_some() && *e == tally.first[0]);
        let one = no_hellos || tally.counts.len() == 1;
        let receipts_agree = no_hellos
            || report
                .epochs
                .iter()
                .all(|e| Some(e) == tally.first[0].as_ref());
        let detail = tally
            .counts
            .iter()
            .map(|(e, per)| {
                format!(
                    "{e}: {} hellos",
                    per.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" + ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        (
            same_first && one && receipts_agree && report.epochs.len() <= 1,
            format!(
                "first hello per replica: {}; {detail}{}; publish receipts: {}",
                first.join(", "),
                if args.replicas > 1 {
                    " (per replica)"
                } else {
                    ""
                },
                if report.epochs.is_empty() {
                    "none".to_owned()
                } else {
                    report.epochs.join(", ")
                }
            ),
        )
    };

    // ---- the table
    let published = report.accepted.len() as u64;
    let pub_secs = report.elapsed.as_secs_f64();
    let events_per_s = if pub_secs > 0.0 {
        published as f64 / pub_secs
    } else {
        0.0
    };
    let epochs = if report.epochs.len() == 1 {
        "1 epoch".to_owned()
    } else {
        format!("{} EPOCHS", report.epochs.len())
    };
    let live = ctx.connected.load(Relaxed);
    if args.throughput {
        table.row(
            "offered load",
            format!(
                "as fast as possible for {} s: {} closed-loop connection(s) per replica x {} \
                 replica(s), {} events of {} B data per request; {live} subscribers",
                args.duration, args.pool, args.replicas, args.batch, args.size
            ),
        );
    } else {
        table.row(
            "offered load",
            format!(
                "{} ev/s x {} B data for {} s = {} events; x {live} clients = {:.0} deliveries/s",
                args.rate,
                args.size,
                args.duration,
                (args.rate * args.duration).round(),
                args.rate * live as f64
            ),
        );
    }
    table.row(
        "published",
        if args.throughput {
            format!(
                "{published} accepted ({epochs}), {} failed, in {} requests, {pub_secs:.2} s",
                report.failed_events, report.requests
            )
        } else {
            format!(
                "{published} accepted ({epochs}), {} failed, in {} requests over {} ticks of {:.0} ms, {pub_secs:.2} s",
                report.failed_events,
                report.requests,
                report.ticks,
                report.tick.as_secs_f64() * 1000.0,
            )
        },
    );
    if args.replicas > 1 {
        table.row(
            "published via",
            report
                .per_replica
                .iter()
                .enumerate()
                .map(|(i, (sent, ok))| format!("replica {i}: {ok}/{sent} requests accepted"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(cutoff) = args.cutoff {
        table.row(
            "publish cutoff",
            format!(
                "at t+{cutoff} s: {} events of the schedule not sent, {} requests ({} events) unanswered \
                 (counted as failed)",
                report.not_sent, report.unanswered, report.unanswered_events
            ),
        );
    }
    if let Some(e) = &report.first_error {
        table.row("publish error", e.clone());
    }
    if args.throughput {
        table.row(
            "publish throughput",
            format!(
                "{events_per_s:.0} accepted events/s ({:.0} requests/s of {} events; \
                 202s x batch / time to the last response)",
                report.per_replica.iter().map(|p| p.1).sum::<u64>() as f64 / pub_secs.max(1e-9),
                args.batch
            ),
        );
    } else {
        table.row(
            "publishes that had to wait",
            format!(
                "{} of {}  (no free connection: {}, took > 1 tick: {}; pool of {} per replica)",
                report.had_to_wait, report.requests, report.waited_for_conn, report.slow, args.pool
            ),
        );
    }
    table.row(
        "publish RTT",
        report.rtt.as_ref().map_or("-".into(), |h| h.summary_ms()),
    );
    if !args.throughput {
        table.row(
            "publish schedule",
            format!(
                "{} ticks started > 1 tick late (max {:.1} ms); publisher thread woke > 1 tick late {} times \
                 (max {:.1} ms: this side's own lag)",
                report.late_ticks,
                report.max_late.as_secs_f64() * 1000.0,
                report.wake_late,
                report.max_wake_delay.as_secs_f64() * 1000.0
            ),
        );
    }
    table.row(
        "delivered",
        format!(
            "{delivered} events, {:.0} ev/s over {window:.2} s (publish {:.2} s + drain {drain_secs:.2} s); avg frame {frame_avg:.0} B",
            delivered as f64 / window,
            publish_end.duration_since(cpu0.at).as_secs_f64()
        ),
    );
    if total.behind > 0 {
        table.row(
            "still behind at drain end",
            format!("{} clients (drain {} s)", total.behind, args.drain),
        );
    }
    table.row("loss (non-stalled clients)", total.loss_text());
    let gaps_text = |t: &Tally| {
        if args.topics.is_none() {
            format!(
                "{} gaps ({} seqs skipped) / {} duplicates or out of order",
                t.gaps, t.gap_seqs, t.dups
            )
        } else {
            format!(
                "gaps not checkable with --topics / {} duplicates or out of order",
                t.dups
            )
        }
    };
    table.row("gaps / duplicates by seq", gaps_text(&total));
    table.row("non-stalled clients at end", total.closes_text());

    let all = Hist::collect(None, None);
    table.row("latency publish->receive", all.summary_ms());
    let (before, during) = (Hist::collect(None, Some(0)), Hist::collect(None, Some(1)));
    if stalling {
        table.row("  others, before stall", before.summary_ms());
        table.row("  others, during stall", during.summary_ms());
    }

    let secs = |a: u64, b: u64| (b - a) as f64 / clk_tck as f64;
    if args.replicas > 1 {
        for (r, t) in tallies.iter().enumerate() {
            let (u, s) = (cpu0.servers[r], cpu1.servers[r]);
            table.row(
                &format!("replica {r}"),
                format!(
                    "{} clients; {}; {}; {}{}; latency {}; CPU {:.2} s; RSS at end {}",
                    t.clients,
                    t.loss_text(),
                    gaps_text(t),
                    t.closes_text(),
                    if t.behind > 0 {
                        format!(", {} behind at drain end", t.behind)
                    } else {
                        String::new()
                    },
                    Hist::collect(Some(r), None).summary_ms(),
                    secs(u.0, s.0) + secs(u.1, s.1),
                    kib(rss_end_each[r])
                ),
            );
        }
    }
    table.row("hello epochs", epoch_text);

    let (server_user, server_sys) = (
        secs(cpu0.server.0, cpu1.server.0),
        secs(cpu0.server.1, cpu1.server.1),
    );
    let (my_user, my_sys) = (secs(cpu0.me.0, cpu1.me.0), secs(cpu0.me.1, cpu1.me.1));
    let (server_cpu, my_cpu) = (server_user + server_sys, my_user + my_sys);
    let per_msg = |cpu: f64| {
        if delivered > 0 {
            cpu * 1e6 / delivered as f64
        } else {
            f64::NAN
        }
    };
    table.row(
        "server CPU",
        format!(
            "{server_cpu:.2} s (user {server_user:.2} + sys {server_sys:.2}) = {:.0} % of a core; \
             {:.2} us per delivered message{}",
            100.0 * server_cpu / window,
            per_msg(server_cpu),
            if args.replicas > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
        ),
    );
    if args.throughput {
        let pub_window = cpu_pub.at.duration_since(cpu0.at).as_secs_f64();
        let cpu = secs(cpu0.server.0, cpu_pub.server.0) + secs(cpu0.server.1, cpu_pub.server.1);
        table.row(
            "server CPU while publishing",
            format!(
                "{cpu:.2} s over {pub_window:.2} s = {:.0} % of a core; {:.2} us per accepted event \
                 (all replicas, fan-out included)",
                100.0 * cpu / pub_window,
                if published > 0 {
                    cpu * 1e6 / published as f64
                } else {
                    f64::NAN
                }
            ),
        );
    }
    let mut redis_cpu = None;
    let mut script_us_per_event = None;
    if let (Some(r0), Some(r1)) = (&redis0, &redis1) {
        let cpu = (r1.cpu.0 - r0.cpu.0) + (r1.cpu.1 - r0.cpu.1);
        redis_cpu = Some(cpu);
        let calls = r1.scripts.0.saturating_sub(r0.scripts.0);
        let usec = r1.scripts.1.saturating_sub(r0.scripts.1);
        let publishes = r1.publish.0.saturating_sub(r0.publish.0);
        let publish_usec = r1.publish.1.saturating_sub(r0.publish.1);
        if published > 0 {
            script_us_per_event = Some(usec as f64 / published as f64);
        }
        table.row(
            "redis",
            format!(
                "CPU {cpu:.2} s (user {:.2} + sys {:.2}) = {:.0} % of a core over {window:.2} s; \
                 scripts (EVAL/EVALSHA, all clients): {calls} calls, {:.1} ms = {:.1} us per call, \
                 {:.2} us per accepted event; PUBLISH {publishes} calls, {:.2} us each; \
                 {} clients connected (INFO, whole server: other users of this Redis count too)",
                r1.cpu.0 - r0.cpu.0,
                r1.cpu.1 - r0.cpu.1,
                100.0 * cpu / window,
                usec as f64 / 1000.0,
                if calls > 0 {
                    usec as f64 / calls as f64
                } else {
                    0.0
                },
                script_us_per_event.unwrap_or(f64::NAN),
                if publishes > 0 {
                    publish_usec as f64 / publishes as f64
                } else {
                    0.0
                },
                r1.clients
            ),
        );
        if let (true, Some(rp)) = (args.throughput, &redis_pub) {
            let pub_window = cpu_pub.at.duration_since(cpu0.at).as_secs_f64();
            let cpu = (rp.cpu.0 - r0.cpu.0) + (rp.cpu.1 - r0.cpu.1);
            table.row(
                "redis while publishing",
                format!(
                    "CPU {cpu:.2} s over {pub_window:.2} s = {:.0} % of a core; {:.2} us per accepted event",
                    100.0 * cpu / pub_window,
                    if published > 0 {
                        cpu * 1e6 / published as f64
                    } else {
                        f64::NAN
                    }
                ),
            );
        }
    }
    table.row(
        "loadgen CPU",
        format!(
            "{my_cpu:.2} s (user {my_user:.2} + sys {my_sys:.2}) = {:.0} % of a core; \
             {:.2} us per delivered message",
            100.0 * my_cpu / window,
            per_msg(my_cpu)
        ),
    );
    let (busy, total_jiffies) = (
        cpu1.machine.0 - cpu0.machine.0,
        cpu1.machine.1 - cpu0.machine.1,
    );
    let machine_busy = if total_jiffies > 0 {
        100.0 * busy as f64 / total_jiffies as f64
    } else {
        0.0
    };
    let saturated = machine_busy > 90.0;
    // What the rest of the machine did meanwhile: busy CPU time not spent in
    // the servers, this process or Redis (a compile or another benchmark
    // makes a run worthless; so does a Redis busy with other clients).
    let capacity = total_jiffies as f64 / clk_tck as f64;
    let others =
        (busy as f64 / clk_tck as f64 - server_cpu - my_cpu - redis_cpu.unwrap_or(0.0)).max(0.0);
    let others_pct = if capacity > 0.0 {
        100.0 * others / capacity
    } else {
        0.0
    };
    table.row(
        "machine",
        format!(
            "{machine_busy:.0} % busy over {} cores{}",
            cores(),
            if saturated {
                format!(
                    " — CPU-saturated: server(s){}, load generator and anything else compete for the cores{}",
                    if redis_cpu.is_some() { ", redis" } else { "" },
                    if my_cpu >= server_cpu {
                        "; the load generator uses as much as the server or more"
                    } else {
                        ""
                    }
                )
            } else {
                String::new()
            }
        ),
    );
    table.row(
        "other processes",
        format!(
            "{others:.2} s of CPU = {others_pct:.0} % of the machine over the run (busy time - servers - loadgen{}){}",
            if redis_cpu.is_some() { " - redis" } else { "" },
            if others_pct > 10.0 {
                " — NOT A QUIET MACHINE: the figures above are disturbed"
            } else {
                ""
            }
        ),
    );
    let peak = samples
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(rss_end)
        .max(rss_end);
    table.row(
        "server RSS",
        format!(
            "before connect {} / after connect {} / end {} / peak {}{}",
            kib(rss_before),
            kib(rss_connected),
            kib(rss_end),
            kib(peak),
            if args.replicas > 1 {
                " (summed over the replicas)"
            } else {
                ""
            }
        ),
    );
    table.row(
        "server RSS per connection",
        format!(
            "{:.2} KiB ((after connect - before) / connected)",
            per_conn(rss_connected)
        ),
    );

    let mut stall_ok = None;
    if stalling {
        let stall_s = stall_offset.as_secs_f64();
        let at_stall = samples
            .iter()
            .rfind(|s| s.0 <= stall_s)
            .map_or(rss_connected, |s| s.1);
        let peak_during = samples
            .iter()
            .filter(|s| s.0 >= stall_s)
            .map(|s| s.1)
            .max()
            .unwrap_or(at_stall);
        let growth = peak_during.saturating_sub(at_stall);
        let client_queue: u64 = args
            .server_env("CLIENT_QUEUE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let budget_kib = client_queue as f64 * frame_avg / 1024.0;
        let stall_wall = ctx.stall_wall_ns.load(Relaxed);
        for (i, (close, at, last, last_t)) in stalled_report.iter().enumerate() {
            table.row(
                &format!("stalled client {i}"),
                format!(
                    "{}; stopped reading at seq {at} (t+{stall_s:.1} s); afterwards read up to seq {last}{}",
                    close_name(*close),
                    if *close == 0 {
                        String::new()
                    } else {
                        format!(
                            ", published {:.1} s into the stall (the server's last event to it)",
                            last_t.saturating_sub(stall_wall) as f64 / 1e9
                        )
                    }
                ),
            );
        }
        table.row(
            "RSS growth during stall",
            format!(
                "{} (peak after t+{stall_s:.1} s {} - at stall {}); budget CLIENT_QUEUE {client_queue} x {frame_avg:.0} B = {}",
                kib(growth),
                kib(peak_during),
                kib(at_stall),
                kib(budget_kib as u64)
            ),
        );
        let p99 = |h: &Hist| h.quantile(0.99);
        let ratio_ok = match (p99(&before), p99(&during)) {
            (Some(b), Some(d)) => Some((d as f64 <= 1.5 * b as f64, d as f64 / b.max(1) as f64)),
            _ => None,
        };
        let closed_ok = stalled_report.iter().all(|s| s.0 == 1008);
        stall_ok = Some((
            ratio_ok,
            closed_ok,
            (growth as f64) < budget_kib,
            growth,
            budget_kib,
        ));
    }

    // ---- targets
    let (missing, gaps, dups) = (total.missing, total.gaps, total.dups);
    let zero_loss =
        missing == 0 && dups == 0 && gaps == 0 && published > 0 && report.failed_events == 0;
    if args.target_zero_loss {
        table.target(
            "zero loss",
            zero_loss,
            format!(
                "{missing} missing, {gaps} gaps, {dups} dups, {} publish failures",
                report.failed_events
            ),
        );
    }
    if args.replicas > 1 {
        table.target(
            "one epoch: first hello on every replica = every hello = every receipt",
            epoch_ok,
            if epoch_ok {
                ctx.epochs.lock().unwrap().first[0]
                    .clone()
                    .or_else(|| report.epochs.first().cloned())
                    .unwrap_or_default()
            } else {
                "see \"hello epochs\"".into()
            },
        );
    }
    if let Some(target) = args.target_events_per_s {
        table.target(
            &format!("accepted events/s >= {target}"),
            events_per_s >= target,
            format!("{events_per_s:.0} events/s"),
        );
    }
    if args.target_no_waits {
        table.target(
            "no publish waits",
            report.had_to_wait == 0,
            format!("{} of {}", report.had_to_wait, report.requests),
        );
    }
    if let Some(target) = args.target_cpu_us {
        let v = per_msg(server_cpu);
        table.target(
            &format!("server CPU <= {target} us per delivered message"),
            v <= target,
            format!("{v:.2} us"),
        );
    }
    if let Some(target) = args.target_p99_ms {
        let p99 = all.quantile(0.99);
        table.target(
            &format!("p99 <= {target} ms"),
            p99.is_some_and(|p| p as f64 / 1000.0 <= target),
            p99.map_or("no samples".into(), |p| format!("{} ms", ms(p))),
        );
    }
    if let Some(target) = args.target_rss_kib {
        let v = per_conn(rss_connected);
        table.target(
            &format!("RSS per connection <= {target} KiB"),
            v <= target,
            format!("{v:.2} KiB"),
        );
    }
    if args.target_stall {
        match stall_ok {
            None => table.target("stall", false, "no --stall in this run".into()),
            Some((ratio, closed, rss_ok, growth, budget)) => {
                table.target(
                    "others' p99 during stall <= 1.5x before",
                    ratio.is_some_and(|r| r.0),
                    ratio.map_or("no samples".into(), |r| format!("{:.2}x", r.1)),
                );
                table.target(
                    "stalled clients closed with 1008",
                    closed,
                    stalled_report
                        .iter()
                        .map(|s| close_name(s.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                table.target(
                    "RSS growth during stall < CLIENT_QUEUE x frame size",
                    rss_ok,
                    format!("{} < {}", kib(growth), kib(budget as u64)),
                );
            }
        }
    }

    // ---- one line for scripts
    let quantile = |q: f64| all.quantile(q).map_or("-".into(), |v| v.to_string());
    let results = [
        (
            "mode",
            if args.throughput {
                "throughput"
            } else {
                "rate"
            }
            .to_owned(),
        ),
        ("hub", args.hub_name().to_owned()),
        ("replicas", args.replicas.to_string()),
        ("clients", live.to_string()),
        ("published", published.to_string()),
        ("failed", report.failed_events.to_string()),
        ("not_sent", report.not_sent.to_string()),
        ("waited", report.had_to_wait.to_string()),
        ("requests", report.requests.to_string()),
        ("events_per_s", format!("{events_per_s:.0}")),
        ("delivered", delivered.to_string()),
        (
            "delivered_per_s",
            format!("{:.0}", delivered as f64 / window),
        ),
        ("cpu_us_per_msg", format!("{:.2}", per_msg(server_cpu))),
        ("p50_us", quantile(0.5)),
        ("p99_us", quantile(0.99)),
        ("p999_us", quantile(0.999)),
        ("max_us", all.max.to_string()),
        ("missing", missing.to_string()),
        ("gaps", gaps.to_string()),
        ("dups", dups.to_string()),
        ("behind", total.behind.to_string()),
        ("closed", total.closed().to_string()),
        ("zero_loss", u8::from(zero_loss).to_string()),
        ("one_epoch", u8::from(epoch_ok).to_string()),
        ("server_cpu_s", format!("{server_cpu:.2}")),
        (
            "redis_cpu_s",
            redis_cpu.map_or("-".into(), |c| format!("{c:.2}")),
        ),
        (
            "script_us_per_event",
            script_us_per_event.map_or("-".into(), |c| format!("{c:.2}")),
        ),
        ("loadgen_cpu_s", format!("{my_cpu:.2}")),
        ("machine_busy_pct", format!("{machine_busy:.0}")),
        ("others_pct", format!("{others_pct:.0}")),
        (
            "rtt_p99_us",
            report
                .rtt
                .as_ref()
                .and_then(|h| h.quantile(0.99))
                .map_or("-".into(), |v| v.to_string()),
        ),
    ];
    for (k, v) in results {
        table.result(k, v);
    }
    0
}

// ---------------------------------------------------------------- retained state, hostile client
