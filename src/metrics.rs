//! `GET /_switchyard/metrics`: Prometheus text format, through
//! `prometheus-client`.
//!
//! Owns: the metric names and the registry. Counters the hot paths touch
//! (connections by transport) are prometheus-client atomics updated in
//! place; the proxy's figures (requests by status class, time to the
//! response head) are kept per event loop ([`ProxyFigures`]: plain atomics
//! no other loop writes, summed at scrape), since prometheus-client's
//! histogram takes a lock every loop would contend for on every proxied
//! request. Everything another module already counts (hub totals,
//! dashboard state and restarts) is read at scrape time by a collector, so
//! no number is kept twice.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::broadcast::Transport;
use crate::hub::Hub;
use crate::replicas::Replicas;
use crate::response::{self, Body};
use crate::supervisor::ChildStatus;
use crate::upstream::{UpstreamHealth, UpstreamState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClassLabel {
    class: &'static str,
}

pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
    /// `switchyard_proxy_requests_total` and
    /// `switchyard_proxy_response_seconds`, per loop.
    proxy: Arc<ProxyFigures>,
}

impl Metrics {
    /// Registers every metric; `dashboard` and `worker` are present when
    /// supervising them.
    pub fn new(
        hub: Arc<dyn Hub>,
        upstream: Arc<UpstreamHealth>,
        dashboard: Option<Arc<ChildStatus>>,
        worker: Option<Arc<ChildStatus>>,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "connections",
            "Live broadcaster clients by transport",
            connections.clone(),
        );
        let proxy = Arc::new(ProxyFigures::new(crate::event_loops::count() + 1));
        registry.register_collector(Box::new(ProxyCollector(proxy.clone())));
        registry.register_collector(Box::new(Live {
            hub,
            upstream,
            dashboard,
            worker,
        }));
        Metrics {
            registry,
            connections,
            proxy,
        }
    }

    /// The gauge a broadcaster client holds while connected, one per
    /// transport in `Transport::ALL` order (the broadcaster keeps them).
    pub fn connection_gauges(&self) -> [Gauge; 3] {
        Transport::ALL.map(|transport| {
            self.connections
                .get_or_create(&TransportLabel {
                    transport: transport.label(),
                })
                .clone()
        })
    }

    /// One proxied request: its answer's status and the time to its head.
    pub fn record_proxied(&self, status: StatusCode, elapsed: Duration) {
        self.proxy.record(status, elapsed);
    }

    /// Adds the sticky-session figures: replicas known and requests
    /// forwarded to another replica (read from `replicas` at each scrape).
    pub fn register_replicas(&mut self, replicas: Arc<Replicas>) {
        self.registry
            .register_collector(Box::new(ReplicaFigures(replicas)));
    }

    pub fn respond(&self) -> Response<Body> {
        let mut text = String::with_capacity(4096);
        if prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).is_err()
        {
            return response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded",
            );
        }
        response::with_type(
            StatusCode::OK,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            response::full(text),
        )
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of `proxy_response_seconds`' buckets, in nanoseconds:
/// 0.5 ms doubling to ~16 s, then +Inf.
const BUCKETS: usize = 17;

fn bucket_bound_nanos(i: usize) -> u64 {
    500_000u64 << i
}

/// The proxy's figures, one [`Shard`] per event loop (and one for any
/// other thread), each written by its own loop only.
struct ProxyFigures {
    shards: Vec<Shard>,
}

/// One loop's counts; a cache line (two, for adjacent-line prefetch) of
/// its own, so loops never write the same line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    classes: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl ProxyFigures {
    fn new(shards: usize) -> ProxyFigures {
        ProxyFigures {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
        }
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        let shard = &self.shards[crate::event_loops::current() % self.shards.len()];
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        shard.classes[class].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (0..BUCKETS - 1)
            .find(|&i| nanos <= bucket_bound_nanos(i))
            .unwrap_or(BUCKETS - 1);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn sum(&self, read: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|shard| read(shard).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// [`ProxyFigures`] as the registry reads them, at each scrape.
struct ProxyCollector(Arc<ProxyFigures>);

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyFigures")
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let figures = &self.0;
        let mut family = encoder.encode_descriptor(
            "proxy_requests",
            "Requests proxied to the dashboard, by status class of the answer",
            None,
            MetricType::Counter,
        )?;
        for (i, class) in CLASSES.into_iter().enumerate() {
            let value = figures.sum(|shard| &shard.classes[i]);
            ConstCounter::new(value).encode(family.encode_family(&StatusClassLabel { class })?)?;
        }
        let buckets: Vec<(f64, u64)> = (0..BUCKETS)
            .map(|i| {
                let bound = if i == BUCKETS - 1 {
                    f64::MAX
                } else {
                    bucket_bound_nanos(i) as f64 / 1e9
                };
                (bound, figures.sum(|shard| &shard.buckets[i]))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = figures.sum(|shard| &shard.sum_nanos) as f64 / 1e9;
        encoder
            .encode_descriptor(
                "proxy_response_seconds",
                "Time from receiving a proxied request to sending its response head (502/504 included)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The replicas' numbers, read at each scrape.
struct ReplicaFigures(Arc<Replicas>);

impl fmt::Debug for ReplicaFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplicaFigures")
    }
}

impl Collector for ReplicaFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauge(
            &mut encoder,
            "replicas",
            "Live replicas this one knows, itself included",
            self.0.known() as i64,
        )?;
        counter(
            &mut encoder,
            "replica_forwarded_requests",
            "Dashboard requests forwarded to the replica holding their session",
            self.0.forwarded(),
        )
    }
}

/// Numbers owned elsewhere, read at each scrape.
struct Live {
    hub: Arc<dyn Hub>,
    upstream: Arc<UpstreamHealth>,
    dashboard: Option<Arc<ChildStatus>>,
    worker: Option<Arc<ChildStatus>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Live")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.hub.stats();
        counter(
            &mut encoder,
            "events_published",
            "Events accepted by this process",
            stats.published,
        )?;
        counter(
            &mut encoder,
            "events_delivered",
            "Events queued to a subscriber (one per subscriber per event)",
            stats.delivered,
        )?;
        counter(
            &mut encoder,
            "events_dropped",
            "Deliveries dropped because a client's queue was full",
            stats.dropped,
        )?;
        counter(
            &mut encoder,
            "slow_client_disconnects",
            "Clients cut off (close 1008) for falling CLIENT_QUEUE behind",
            stats.cut_off,
        )?;
        gauge(
            &mut encoder,
            "history_size",
            "Events kept for resume",
            stats.history_len as i64,
        )?;
        gauge(
            &mut encoder,
            "subscribers",
            "Subscribers registered in the hub",
            stats.subscribers as i64,
        )?;
        counter(
            &mut encoder,
            "log_lines_dropped",
            "Log lines dropped because stdout did not keep up (logging never blocks)",
            crate::logging::dropped_lines(),
        )?;
        let state = self.upstream.state();
        if state != UpstreamState::None {
            let up = i64::from(state == UpstreamState::Up);
            gauge(
                &mut encoder,
                "upstream_up",
                "1 when the dashboard answers",
                up,
            )?;
        }
        if let Some(up) = self.hub.backplane_up() {
            gauge(
                &mut encoder,
                "redis_up",
                "1 when the Redis backplane answers",
                i64::from(up),
            )?;
        }
        if let Some(dashboard) = &self.dashboard {
            counter(
                &mut encoder,
                "dashboard_restarts",
                "Restarts of the supervised dashboard",
                dashboard.restarts(),
            )?;
        }
        if let Some(worker) = &self.worker {
            counter(
                &mut encoder,
                "worker_restarts",
                "Restarts of the supervised worker (WORKER_COMMAND)",
                worker.restarts(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_figures_read_as_a_counter_family_and_a_histogram() {
        let figures = Arc::new(ProxyFigures::new(3));
        figures.record(StatusCode::OK, Duration::from_micros(300));
        figures.record(StatusCode::OK, Duration::from_millis(3));
        figures.record(StatusCode::BAD_GATEWAY, Duration::from_secs(100));
        let mut registry = Registry::with_prefix("switchyard");
        registry.register_collector(Box::new(ProxyCollector(figures)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "switchyard_proxy_requests_total{class=\"2xx\"} 2",
            "switchyard_proxy_requests_total{class=\"5xx\"} 1",
            "switchyard_proxy_requests_total{class=\"1xx\"} 0",
            "switchyard_proxy_response_seconds_bucket{le=\"0.0005\"} 1",
            "switchyard_proxy_response_seconds_bucket{le=\"0.004\"} 2",
            "switchyard_proxy_response_seconds_bucket{le=\"+Inf\"} 3",
            "switchyard_proxy_response_seconds_count 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
