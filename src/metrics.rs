//! `GET /_switchyard/metrics`: Prometheus text format, through
//! `prometheus-client`.
//!
//! Owns: the metric names and the registry. Counters the hot paths touch
//! (connections by transport, proxy requests, upstream latency) are
//! prometheus-client atomics updated in place; everything another module
//! already counts (hub totals, dashboard state and restarts) is read at
//! scrape time by a collector, so no number is kept twice.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    /// `switchyard_proxy_requests_total` by class 1xx..5xx, looked up once:
    /// a proxied request touches one atomic, not the family's map.
    proxy_requests: [Counter; 5],
    upstream_latency: Histogram,
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
        let proxy_requests = Family::<StatusClassLabel, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests proxied to the dashboard, by status class of the answer",
            proxy_requests.clone(),
        );
        // 0.5 ms .. ~16 s
        let upstream_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "proxy_response_seconds",
            "Time from receiving a proxied request to sending its response head (502/504 included)",
            upstream_latency.clone(),
        );
        registry.register_collector(Box::new(Live {
            hub,
            upstream,
            dashboard,
            worker,
        }));
        let proxy_requests = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            proxy_requests
                .get_or_create(&StatusClassLabel { class })
                .clone()
        });
        Metrics {
            registry,
            connections,
            proxy_requests,
            upstream_latency,
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
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.proxy_requests[class].inc();
        self.upstream_latency.observe(elapsed.as_secs_f64());
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
