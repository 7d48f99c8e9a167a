//! The publisher: keep-alive HTTP/1.1 connections posting to /_switchyard/publish on an open-loop schedule, or closed-loop for --throughput.

use super::*;

pub(crate) struct PubConfig {
    pub(crate) args: Args,
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) start: Instant,
    /// `--hostile`: no request is sent, and none is waited for, after this;
    /// one still unanswered counts as failed, its RTT as its age then.
    pub(crate) cutoff: Option<Instant>,
    /// `--hostile`: keep (send time, RTT) of every request.
    pub(crate) log: bool,
}

#[derive(Default)]
pub(crate) struct PubReport {
    pub(crate) ticks: u64,
    pub(crate) requests: u64,
    pub(crate) events_sent: u64,
    /// (seq, topic) of every accepted event.
    pub(crate) accepted: Vec<(u64, usize)>,
    pub(crate) epochs: Vec<String>,
    pub(crate) failed_events: u64,
    pub(crate) first_error: Option<String>,
    /// Requests sent to each replica, and how many were accepted (202).
    pub(crate) per_replica: Vec<(u64, u64)>,
    /// No keep-alive connection was free at the scheduled time.
    pub(crate) waited_for_conn: u64,
    /// The request took longer than a tick.
    pub(crate) slow: u64,
    /// Publishes with either of the above.
    pub(crate) had_to_wait: u64,
    /// Ticks started more than a tick late (after waiting for a connection,
    /// or because this thread did not get a core in time).
    pub(crate) late_ticks: u64,
    pub(crate) max_late: Duration,
    /// How late the publisher thread woke up from its timer when it had to
    /// sleep: the load generator's own lag (CPU starvation), not the server's.
    pub(crate) wake_late: u64,
    pub(crate) max_wake_delay: Duration,
    pub(crate) rtt: Option<Hist>,
    /// (send time, RTT) of every request, when PubConfig::log.
    pub(crate) log: Option<Vec<(Instant, Duration)>>,
    /// Events the schedule held: rate x duration.
    pub(crate) planned: u64,
    /// Requests still unanswered at the cutoff, and their events.
    pub(crate) unanswered: u64,
    pub(crate) unanswered_events: u64,
    /// Events of the schedule never sent: the cutoff came first.
    pub(crate) not_sent: u64,
    pub(crate) tick: Duration,
    /// From the scheduled start to the last response.
    pub(crate) elapsed: Duration,
}

#[derive(Deserialize)]
pub(crate) struct Receipt {
    pub(crate) epoch: Option<String>,
    pub(crate) seq: Option<u64>,
    pub(crate) seqs: Option<Vec<u64>>,
}

pub(crate) type Sender = SendRequest<Full<Bytes>>;

pub(crate) async fn open_publish_conn(server: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("publish connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("publish handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The body of `n` events starting at event index `first`, stamped now.
pub(crate) fn publish_body(args: &Args, first: u64, n: u64, pad: &str) -> (Bytes, Vec<usize>) {
    let t = wall_ns();
    let mut s = String::with_capacity(n as usize * (args.size + 64) + 2);
    let mut topics = Vec::with_capacity(n as usize);
    if n > 1 {
        s.push('[');
    }
    for k in first..first + n {
        if k > first {
            s.push(',');
        }
        let topic = args.topic(k);
        topics.push(topic);
        let _ = write!(
            s,
            r#"{{"topic":"{}","data":{{"t":{t},"p":"{pad}"}}}}"#,
            args.topic_name(topic)
        );
    }
    if n > 1 {
        s.push(']');
    }
    (Bytes::from(s), topics)
}

/// One request of a publisher.
pub(crate) struct Publish {
    pub(crate) replica: usize,
    pub(crate) server: SocketAddr,
    pub(crate) body: Bytes,
    pub(crate) topics: Vec<usize>,
    /// Slower than this counts as "had to wait" (the rate mode's tick).
    pub(crate) tick: Option<Duration>,
    /// No connection was free when it was due.
    pub(crate) waited: bool,
    /// See PubConfig::cutoff.
    pub(crate) cutoff: Option<Instant>,
}

/// One `POST /_switchyard/publish` on a kept connection: its status and body.
pub(crate) async fn post_publish(
    sender: &mut Sender,
    server: SocketAddr,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), hyper::Error> {
    let request = http::Request::post("/_switchyard/publish")
        .header(http::header::HOST, server.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a publish request from valid parts");
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Sends one publish and records the outcome; false when the connection
/// cannot be used again.
pub(crate) async fn publish_once(
    sender: &mut Sender,
    p: Publish,
    report: &Mutex<PubReport>,
) -> bool {
    let n = p.topics.len() as u64;
    let sent = Instant::now();
    let exchange = post_publish(sender, p.server, p.body);
    let (outcome, cut_off) = match p.cutoff {
        None => (exchange.await, false),
        Some(cutoff) => match tokio::time::timeout_at(cutoff, exchange).await {
            Ok(outcome) => (outcome, false),
            Err(_) => (Ok((http::StatusCode::GATEWAY_TIMEOUT, Bytes::new())), true),
        },
    };
    let rtt = sent.elapsed();
    let mut r = report.lock().unwrap();
    r.requests += 1;
    r.events_sent += n;
    r.per_replica[p.replica].0 += 1;
    if let Some(h) = r.rtt.as_mut() {
        h.record(rtt.as_micros() as u64);
    }
    if let Some(log) = r.log.as_mut() {
        log.push((sent, rtt));
    }
    if cut_off {
        r.unanswered += 1;
        r.unanswered_events += n;
        r.failed_events += n;
        if r.first_error.is_none() {
            r.first_error = Some(format!(
                "publish to replica {}: no answer within {:.1} s (the run's cutoff)",
                p.replica,
                rtt.as_secs_f64()
            ));
        }
        return false;
    }
    let slow = p.tick.is_some_and(|tick| rtt > tick);
    r.slow += u64::from(slow);
    r.waited_for_conn += u64::from(p.waited);
    r.had_to_wait += u64::from(slow || p.waited);
    let receipt = match &outcome {
        Ok((status, body)) if *status == http::StatusCode::ACCEPTED => {
            serde_json::from_slice::<Receipt>(body).ok()
        }
        _ => None,
    };
    let seqs = receipt.as_ref().map(|rc| match (&rc.seqs, rc.seq) {
        (Some(seqs), _) => seqs.clone(),
        (None, Some(seq)) => vec![seq],
        (None, None) => Vec::new(),
    });
    match seqs {
        Some(seqs) if seqs.len() as u64 == n => {
            r.per_replica[p.replica].1 += 1;
            r.accepted.extend(seqs.into_iter().zip(p.topics));
            if let Some(epoch) = receipt.and_then(|rc| rc.epoch) {
                if !r.epochs.contains(&epoch) {
                    r.epochs.push(epoch);
                }
            }
        }
        _ => {
            r.failed_events += n;
            if r.first_error.is_none() {
                r.first_error = Some(match &outcome {
                    Ok((status, body)) => format!(
                        "publish to replica {} answered {status}: {}",
                        p.replica,
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                    Err(e) => format!("publish to replica {} failed: {e}", p.replica),
                });
            }
        }
    }
    outcome.is_ok() && !sender.is_closed()
}

/// Runs the publisher on a thread of its own (so its timing never waits for
/// the clients' runtime) and waits for its report.
pub(crate) async fn publish_on_own_thread(config: PubConfig) -> PubReport {
    let (report_tx, report_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let _ = report_tx.send(run_publisher(config));
        })
        .expect("publisher thread");
    report_rx.await.unwrap_or_default()
}

pub(crate) fn run_publisher(config: PubConfig) -> PubReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("publisher runtime");
    if config.args.throughput {
        runtime.block_on(throughput_loop(config))
    } else {
        runtime.block_on(publish_loop(config))
    }
}

/// The open-loop schedule: `--rate` events/s in ticks, request k to
/// replica k mod N, each over a free keep-alive connection of that replica.
pub(crate) async fn publish_loop(config: PubConfig) -> PubReport {
    let args = &config.args;
    let replicas = config.servers.len();
    let tick = Duration::from_secs_f64((1.0 / args.rate).max(args.tick_ms / 1000.0));
    let report = Arc::new(Mutex::new(PubReport {
        tick,
        rtt: Some(Hist::new()),
        log: config.log.then(Vec::new),
        per_replica: vec![(0, 0); replicas],
        ..PubReport::default()
    }));
    let mut pools = Vec::with_capacity(replicas);
    for &server in &config.servers {
        let (free_tx, free_rx) = mpsc::unbounded_channel::<Sender>();
        for _ in 0..args.pool {
            match open_publish_conn(server).await {
                Ok(sender) => {
                    let _ = free_tx.send(sender);
                }
                Err(e) => {
                    let mut r = report.lock().unwrap();
                    r.first_error = Some(e);
                    return std::mem::take(&mut *r);
                }
            }
        }
        pools.push((free_tx, free_rx));
    }
    let total = (args.rate * args.duration).round() as u64;
    report.lock().unwrap().planned = total;
    let cutoff = config.cutoff;
    let n_ticks = (args.duration / tick.as_secs_f64()).round().max(1.0) as u64;
    let due_by = |i: u64| ((args.rate * tick.as_secs_f64() * i as f64).round() as u64).min(total);
    // data is {"t":<19 digits>,"p":"<pad>"}: 32 bytes around the pad
    let pad = "x".repeat(args.size.saturating_sub(32));
    let per_body = (args.max_body / (args.size + 80)).max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0u64;
    let mut request_no = 0usize;
    'ticks: for i in 0..n_ticks {
        let due = config.start + tick * i as u32;
        if cutoff.is_some_and(|c| due >= c) {
            break;
        }
        let slept = Instant::now() < due;
        tokio::time::sleep_until(due).await;
        let late = Instant::now().saturating_duration_since(due);
        let mut remaining = due_by(i + 1) - k;
        {
            let mut r = report.lock().unwrap();
            r.ticks += 1;
            r.max_late = r.max_late.max(late);
            r.late_ticks += u64::from(late > tick);
            if slept {
                r.max_wake_delay = r.max_wake_delay.max(late);
                r.wake_late += u64::from(late > tick);
            }
        }
        while remaining > 0 {
            let n = remaining.min(per_body);
            let replica = request_no % replicas;
            request_no += 1;
            let (free_tx, free_rx) = &mut pools[replica];
            let (mut sender, waited) = match free_rx.try_recv() {
                Ok(s) => (s, false),
                Err(_) => {
                    let free = match cutoff {
                        Some(c) => match tokio::time::timeout_at(c, free_rx.recv()).await {
                            Ok(free) => free,
                            Err(_) => break 'ticks,
                        },
                        None => free_rx.recv().await,
                    };
                    match free {
                        Some(s) => (s, true),
                        None => unreachable!("free_tx lives here"),
                    }
                }
            };
            let (body, topics) = publish_body(args, k, n, &pad);
            k += n;
            remaining -= n;
            let report = report.clone();
            let free_tx = free_tx.clone();
            let server = config.servers[replica];
            tasks.spawn(async move {
                let publish = Publish {
                    replica,
                    server,
                    body,
                    topics,
                    tick: Some(tick),
                    waited,
                    cutoff,
                };
                if publish_once(&mut sender, publish, &report).await {
                    let _ = free_tx.send(sender);
                } else if cutoff.is_some_and(|c| Instant::now() >= c) {
                    // past the cutoff nothing more is sent
                } else if let Ok(fresh) = open_publish_conn(server).await {
                    let _ = free_tx.send(fresh);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut r = report.lock().unwrap();
    r.not_sent = total.saturating_sub(k);
    r.elapsed = config.start.elapsed();
    std::mem::take(&mut *r)
}

/// `--throughput`: `--pool` connections per replica (interleaved, so the
/// requests alternate between replicas), each sending `--batch` events per
/// request back to back until `--duration` is over.
pub(crate) async fn throughput_loop(config: PubConfig) -> PubReport {
    let args = Arc::new(config.args.clone());
    let replicas = config.servers.len();
    let report = Arc::new(Mutex::new(PubReport {
        rtt: Some(Hist::new()),
        per_replica: vec![(0, 0); replicas],
        ..PubReport::default()
    }));
    let mut senders = Vec::new();
    for _ in 0..args.pool {
        for (replica, &server) in config.servers.iter().enumerate() {
            match open_publish_conn(server).await {
                Ok(sender) => senders.push((replica, server, sender)),
                Err(e) => {
                    let mut r = report.lock().unwrap();
                    r.first_error = Some(e);
                    return std::mem::take(&mut *r);
                }
            }
        }
    }
    let pad: Arc<str> = Arc::from("x".repeat(args.size.saturating_sub(32)));
    let end = config.start + Duration::from_secs_f64(args.duration);
    let next_event = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (replica, server, mut sender) in senders {
        let (args, pad, report, next_event) = (
            args.clone(),
            pad.clone(),
            report.clone(),
            next_event.clone(),
        );
        let start = config.start;
        tasks.spawn(async move {
            tokio::time::sleep_until(start).await;
            let batch = args.batch as u64;
            while Instant::now() < end {
                let first = next_event.fetch_add(batch, Relaxed);
                let (body, topics) = publish_body(&args, first, batch, &pad);
                let publish = Publish {
                    replica,
                    server,
                    body,
                    topics,
                    tick: None,
                    waited: false,
                    cutoff: None,
                };
                if !publish_once(&mut sender, publish, &report).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match open_publish_conn(server).await {
                        Ok(fresh) => sender = fresh,
                        Err(_) => return,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut r = report.lock().unwrap();
    r.ticks = 0;
    r.elapsed = config.start.elapsed();
    std::mem::take(&mut *r)
}

// ---------------------------------------------------------------- the run

/// `--retained`: N retained topics of `--retained-size` bytes of data,
/// published to `server` one request each before any client connects, so
/// every hello carries them (20 x 3072 B: the issue's 60 KB hello).
pub(crate) async fn publish_retained(args: &Args, server: SocketAddr) -> Result<(), String> {
    let mut sender = open_publish_conn(server).await?;
    // data is {"p":"<pad>"}: 8 bytes around the pad
    let pad = "x".repeat(args.retained_size.saturating_sub(8));
    for i in 0..args.retained {
        let topic = format!("bench/retained/{i}");
        let body = format!(r#"{{"topic":"{topic}","retain":true,"data":{{"p":"{pad}"}}}}"#);
        let exchange = post_publish(&mut sender, server, Bytes::from(body));
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| format!("publish of {topic}: no answer within 10 s"))?
            .map_err(|e| format!("publish of {topic}: {e}"))?;
        if status != http::StatusCode::ACCEPTED {
            return Err(format!(
                "publish of {topic} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
    }
    Ok(())
}
