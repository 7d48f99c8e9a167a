//! Latency histograms: fixed-size, log-linear, one per worker thread (never a list of samples).

use super::*;

/// Log-linear buckets over microseconds: exact below 128, then 64 buckets
/// per power of two (about 1.6 % wide) up to 2^40 us.
pub(crate) const BUCKETS: usize = 2304;
/// Latencies are split by publish time: 0 before the stall, 1 during it.
pub(crate) const PHASES: usize = 2;
/// Histogram slots per worker thread: PHASES per replica (replica r, phase
/// p is slot r * PHASES + p). Set once in main, before any client runs.
pub(crate) static HIST_SLOTS: AtomicUsize = AtomicUsize::new(PHASES);

pub(crate) fn bucket_of(us: u64) -> usize {
    let us = us.min((1 << 40) - 1);
    if us < 64 {
        us as usize
    } else {
        let e = 63 - us.leading_zeros() as u64;
        ((e - 6) * 64 + (us >> (e - 6))) as usize
    }
}

pub(crate) fn bucket_low(i: usize) -> u64 {
    if i < 128 {
        i as u64
    } else {
        let e = (i / 64 + 5) as u64;
        ((i % 64 + 64) as u64) << (e - 6)
    }
}

/// One worker thread's histograms: written by that thread only, read after
/// the run; atomics only so the reader may look without unsafe code.
pub(crate) struct ThreadHist {
    pub(crate) counts: Vec<AtomicU64>,
    pub(crate) max: Vec<AtomicU64>,
}

pub(crate) static ALL_HISTS: Mutex<Vec<Arc<ThreadHist>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL_HIST: Arc<ThreadHist> = {
        let slots = HIST_SLOTS.load(Relaxed);
        let hist = Arc::new(ThreadHist {
            counts: (0..BUCKETS * slots).map(|_| AtomicU64::new(0)).collect(),
            max: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        });
        ALL_HISTS.lock().unwrap().push(hist.clone());
        hist
    };
}

/// `slot`: replica * PHASES + phase.
pub(crate) fn record_latency(slot: usize, us: u64) {
    LOCAL_HIST.with(|h| {
        bump(&h.counts[slot * BUCKETS + bucket_of(us)], 1);
        if us > h.max[slot].load(Relaxed) {
            h.max[slot].store(us, Relaxed);
        }
    });
}

/// A merged (or single-owner) histogram.
#[derive(Clone)]
pub(crate) struct Hist {
    pub(crate) counts: Vec<u64>,
    pub(crate) max: u64,
    pub(crate) total: u64,
}

impl Hist {
    pub(crate) fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            max: 0,
            total: 0,
        }
    }

    pub(crate) fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.max = self.max.max(us);
        self.total += 1;
    }

    /// The q-quantile in us: the upper edge of its bucket, never above max.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = if i + 1 < BUCKETS {
                    bucket_low(i + 1) - 1
                } else {
                    u64::MAX
                };
                return Some(upper.min(self.max));
            }
        }
        Some(self.max)
    }

    /// The worker threads' histograms, merged: of one replica or all, of
    /// one phase or both.
    pub(crate) fn collect(replica: Option<usize>, phase: Option<usize>) -> Hist {
        let mut merged = Hist::new();
        for h in ALL_HISTS.lock().unwrap().iter() {
            for slot in 0..h.max.len() {
                if replica.is_some_and(|r| slot / PHASES != r)
                    || phase.is_some_and(|p| slot % PHASES != p)
                {
                    continue;
                }
                for (i, c) in h.counts[slot * BUCKETS..(slot + 1) * BUCKETS]
                    .iter()
                    .enumerate()
                {
                    let c = c.load(Relaxed);
                    merged.counts[i] += c;
                    merged.total += c;
                }
                merged.max = merged.max.max(h.max[slot].load(Relaxed));
            }
        }
        merged
    }

    pub(crate) fn summary_ms(&self) -> String {
        match (
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
        ) {
            (Some(p50), Some(p99), Some(p999)) => format!(
                "p50 {} / p99 {} / p99.9 {} / max {} ms  ({} samples)",
                ms(p50),
                ms(p99),
                ms(p999),
                ms(self.max),
                self.total
            ),
            _ => "no samples".into(),
        }
    }
}

pub(crate) fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
