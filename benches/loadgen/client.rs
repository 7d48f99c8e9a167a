//! The WebSocket clients: connecting from many source addresses, reading and counting events (seq gaps, duplicates, latency).

use super::*;

/// How a client's connection ended (`close`): 0 still open, 1..=4999 the
/// close code the server sent, or one of these.
pub(crate) const CLOSE_EOF: u32 = 10_000;
pub(crate) const CLOSE_ERROR: u32 = 10_001;
pub(crate) const CONNECT_FAILED: u32 = 10_002;
pub(crate) const NO_HELLO: u64 = u64::MAX;

pub(crate) fn close_name(code: u32) -> String {
    match code {
        0 => "open".into(),
        CLOSE_EOF => "EOF without close frame".into(),
        CLOSE_ERROR => "socket error".into(),
        CONNECT_FAILED => "connect failed".into(),
        c => format!("close {c}"),
    }
}

/// One client's counters; only its own task writes them. Aligned so two
/// clients on two workers never share a cache line.
#[repr(align(64))]
pub(crate) struct ClientStats {
    /// seq of its hello, NO_HELLO until then.
    pub(crate) hello_seq: AtomicU64,
    /// Highest seq received (hello's seq at first).
    pub(crate) last_seq: AtomicU64,
    /// Event frames received.
    pub(crate) received: AtomicU64,
    /// Bytes of event frames received.
    pub(crate) bytes: AtomicU64,
    /// Seqs skipped, counted when it subscribes to everything.
    pub(crate) gap_seqs: AtomicU64,
    /// Times the seq jumped.
    pub(crate) gaps: AtomicU64,
    /// Events whose seq was not above the last one.
    pub(crate) dups: AtomicU64,
    /// See CLOSE_*.
    pub(crate) close: AtomicU32,
    /// A stalled client's last seq before it stopped reading.
    pub(crate) seq_at_stall: AtomicU64,
    /// A stalled client's publish time (wall ns) of the last event it got.
    pub(crate) last_t: AtomicU64,
}

impl ClientStats {
    pub(crate) fn new() -> ClientStats {
        ClientStats {
            hello_seq: AtomicU64::new(NO_HELLO),
            last_seq: AtomicU64::new(0),
            received: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            gap_seqs: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            close: AtomicU32::new(0),
            seq_at_stall: AtomicU64::new(0),
            last_t: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_close(&self, code: u32) {
        let _ = self.close.compare_exchange(0, code, Relaxed, Relaxed);
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) stall_at: Instant,
    pub(crate) resume_at: Instant,
}

/// The epochs of the hellos, per replica.
pub(crate) struct EpochTally {
    /// The epoch of each replica's first hello.
    pub(crate) first: Vec<Option<String>>,
    /// epoch -> hellos per replica.
    pub(crate) counts: BTreeMap<String, Vec<usize>>,
}

/// Everything the client tasks share.
pub(crate) struct Ctx {
    pub(crate) args: Args,
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) ws_path: String,
    pub(crate) sources: Vec<Ipv4Addr>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) stats: Vec<ClientStats>,
    pub(crate) connect_gate: Semaphore,
    pub(crate) connected: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) first_error: Mutex<Option<String>>,
    pub(crate) epochs: Mutex<EpochTally>,
    /// The largest hello frame any client got, bytes.
    pub(crate) hello_bytes: AtomicUsize,
    /// Events published at or after this wall-clock ns are "during the stall".
    pub(crate) stall_wall_ns: AtomicU64,
    pub(crate) schedule: watch::Receiver<Option<Schedule>>,
}

impl Ctx {
    pub(crate) fn server_of(&self, idx: usize) -> SocketAddr {
        self.servers[self.args.replica_of(idx)]
    }

    pub(crate) fn url(&self, idx: usize) -> String {
        match self.args.topics {
            Some(t) => format!(
                "ws://{}{}?topics=bench/{}",
                self.server_of(idx),
                self.ws_path,
                idx % t
            ),
            None => format!("ws://{}{}", self.server_of(idx), self.ws_path),
        }
    }

    pub(crate) fn is_stalled(&self, idx: usize) -> bool {
        idx < self.args.stall
    }
}

/// A few source addresses 127.A.B.2.., fresh per run, each serving at most
/// 10,000 clients (the ephemeral range here is ~28,000 ports per address).
pub(crate) fn source_addresses(clients: usize) -> Vec<Ipv4Addr> {
    let count = clients.div_ceil(10_000).max(1);
    let seed = (wall_ns() / 1000) ^ (u64::from(std::process::id()) << 20);
    let a = 1 + (seed % 250) as u8;
    let b = ((seed / 250) % 256) as u8;
    (0..count)
        .map(|k| Ipv4Addr::new(127, a, b, 2 + k as u8))
        .collect()
}

pub(crate) async fn connect_ws(ctx: &Ctx, idx: usize) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if ctx.is_stalled(idx) {
        socket
            .set_recv_buffer_size(ctx.args.stall_rcvbuf as u32)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    let source = ctx.sources[idx % ctx.sources.len()];
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(ctx.server_of(idx))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(ctx.url(idx), stream, Some(ctx.ws_config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

pub(crate) const EVENT_PREFIX: &[u8] = br#"{"type":"event","seq":"#;
pub(crate) const HELLO_PREFIX: &[u8] = br#"{"type":"hello","#;

/// Digits at `from`, and where they end.
#[inline]
pub(crate) fn digits(b: &[u8], mut i: usize) -> (u64, usize) {
    let mut v = 0u64;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        v = v * 10 + u64::from(d - b'0');
        i += 1;
    }
    (v, i)
}

/// Where the first `pat` at or after `from` ends.
#[inline]
pub(crate) fn find_after(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p + pat.len())
}

/// A hello's (epoch, seq).
pub(crate) fn hello_info(b: &[u8]) -> Option<(String, u64)> {
    if !b.starts_with(HELLO_PREFIX) {
        return None;
    }
    let at = find_after(b, HELLO_PREFIX.len(), br#""epoch":""#)?;
    let len = b.get(at..)?.iter().position(|&c| c == b'"')?;
    let epoch = String::from_utf8_lossy(&b[at..at + len]).into_owned();
    let at = find_after(b, HELLO_PREFIX.len(), br#","seq":"#)?;
    Some((epoch, digits(b, at).0))
}

/// Reads one client's frames and keeps its counters.
pub(crate) struct Reader<'a> {
    pub(crate) ctx: &'a Ctx,
    pub(crate) st: &'a ClientStats,
    pub(crate) next: u64,
    /// Subscribed to everything: every seq is ours, so a jump is a gap.
    pub(crate) gap_check: bool,
    /// Stalled clients' latency says nothing about the server.
    pub(crate) record: bool,
    /// Histogram slot of phase 0: replica * PHASES.
    pub(crate) slot: usize,
}

impl Reader<'_> {
    /// Handles one read; false when the connection is over.
    #[inline]
    pub(crate) fn on(&mut self, msg: Result<Message, tungstenite::Error>) -> bool {
        match msg {
            Ok(Message::Text(text)) => {
                self.frame(text.as_bytes());
                true
            }
            Ok(Message::Close(frame)) => {
                self.st
                    .set_close(frame.map_or(1005, |f| u32::from(u16::from(f.code))));
                false
            }
            Ok(_) => true,
            Err(_) => {
                self.st.set_close(CLOSE_ERROR);
                false
            }
        }
    }

    #[inline]
    pub(crate) fn frame(&mut self, b: &[u8]) {
        if !b.starts_with(EVENT_PREFIX) {
            return; // hello, subscribed, reset, error: not counted
        }
        let (seq, end) = digits(b, EVENT_PREFIX.len());
        let st = self.st;
        bump(&st.received, 1);
        bump(&st.bytes, b.len() as u64);
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            if self.gap_check {
                bump(&st.gaps, 1);
                bump(&st.gap_seqs, seq - self.next);
            }
            self.next = seq + 1;
        } else {
            bump(&st.dups, 1);
        }
        st.last_seq.store(self.next - 1, Relaxed);
        if let Some(at) = find_after(b, end, br#"{"t":"#) {
            let t = digits(b, at).0;
            if self.record {
                let us = wall_ns().saturating_sub(t) / 1000;
                let phase = usize::from(t >= self.ctx.stall_wall_ns.load(Relaxed));
                record_latency(self.slot + phase, us);
            } else {
                st.last_t.store(t, Relaxed);
            }
        }
    }
}

pub(crate) async fn client_task(idx: usize, ctx: Arc<Ctx>) {
    let st = &ctx.stats[idx];
    let fail = |why: String| {
        st.set_close(CONNECT_FAILED);
        ctx.first_error.lock().unwrap().get_or_insert(why);
        ctx.failed.fetch_add(1, Relaxed);
    };
    let Ok(permit) = ctx.connect_gate.acquire().await else {
        return;
    };
    let mut ws = None;
    let mut why = String::new();
    for attempt in 0..4u32 {
        match connect_ws(&ctx, idx).await {
            Ok(w) => {
                ws = Some(w);
                break;
            }
            Err(e) => {
                why = e;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
        }
    }
    let Some(mut ws) = ws else { return fail(why) };
    let hello = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => {
            ctx.hello_bytes.fetch_max(text.len(), Relaxed);
            hello_info(text.as_bytes())
        }
        _ => None,
    };
    drop(permit);
    let Some((epoch, hello)) = hello else {
        return fail("no hello frame within 30 s".into());
    };
    let replica = ctx.args.replica_of(idx);
    {
        let mut tally = ctx.epochs.lock().unwrap();
        tally.first[replica].get_or_insert_with(|| epoch.clone());
        let replicas = ctx.args.replicas;
        tally
            .counts
            .entry(epoch)
            .or_insert_with(|| vec![0; replicas])[replica] += 1;
    }
    st.hello_seq.store(hello, Relaxed);
    st.last_seq.store(hello, Relaxed);
    ctx.connected.fetch_add(1, Relaxed);

    let stalled = ctx.is_stalled(idx);
    let mut reader = Reader {
        ctx: &ctx,
        st,
        next: hello + 1,
        gap_check: ctx.args.topics.is_none(),
        record: !stalled,
        slot: replica * PHASES,
    };
    if !stalled {
        while let Some(msg) = ws.next().await {
            if !reader.on(msg) {
                return;
            }
        }
        return st.set_close(CLOSE_EOF);
    }

    // A stalled client: reads until stall_at, then nothing until resume_at,
    // then reads again to see how the server ended it.
    let mut schedule = ctx.schedule.clone();
    let plan = loop {
        if let Some(plan) = *schedule.borrow_and_update() {
            break plan;
        }
        if schedule.changed().await.is_err() {
            return;
        }
    };
    loop {
        match tokio::time::timeout_at(plan.stall_at, ws.next()).await {
            Err(_) => break,
            Ok(Some(msg)) => {
                if !reader.on(msg) {
                    return;
                }
            }
            Ok(None) => return st.set_close(CLOSE_EOF),
        }
    }
    st.seq_at_stall.store(reader.next - 1, Relaxed);
    tokio::time::sleep_until(plan.resume_at).await;
    let give_up = plan.resume_at + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(give_up, ws.next()).await {
            Err(_) => return, // still open: close stays 0
            Ok(Some(msg)) => {
                if !reader.on(msg) {
                    return;
                }
            }
            Ok(None) => return st.set_close(CLOSE_EOF),
        }
    }
}

// ---------------------------------------------------------------- publisher
