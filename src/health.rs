//! `GET /health`: Railway's health check and an operator's first look.
//!
//! 200 `{"status":"healthy",…}` normally; 200 `{"status":"degraded",…}`
//! while Redis is down (`"redis":"down"`: publishes answer 503, clients stay
//! connected; a restart would not bring Redis back, so Railway must keep the
//! replica); 503 `{"status":"starting",…}` while a configured dashboard has
//! not answered once, so a deployment is not marked ready before its
//! dashboard is. The worker (`WORKER_COMMAND`) is reported but never holds
//! readiness back.

use std::time::SystemTime;

use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::hub::Hub;
use crate::lease::LeaseView;
use crate::replicas::Replicas;
use crate::response::{self, Body};
use crate::supervisor::{ChildState, ChildStatus};
use crate::upstream::{UpstreamHealth, UpstreamState};

#[derive(Serialize)]
struct HealthReport<'a> {
    status: &'static str,
    connections: usize,
    timestamp: String,
    websocket_enabled: bool,
    upstream: UpstreamState,
    version: &'static str,
    /// Only when supervising a dashboard.
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<u64>,
    /// Only when REDIS_URL is set: "up" or "down".
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
    /// Only when WORKER_COMMAND is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<WorkerReport>,
    /// Only with sticky sessions (REDIS_URL and a dashboard): this
    /// replica's id (the session cookie's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    /// Only with sticky sessions: the live replicas this one knows, itself
    /// included.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<usize>,
}

#[derive(Serialize)]
struct WorkerReport {
    state: ChildState,
    restarts: u64,
    /// With REDIS_URL: the replica holding the worker's lease, as last
    /// read from Redis (null before the first answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<Option<String>>,
}

/// What `/health` reports on, each from the module that counts it.
pub struct Sources<'a> {
    /// Live broadcaster clients (WebSocket, SSE, long-poll waiters).
    pub connections: usize,
    pub websocket_enabled: bool,
    pub upstream: &'a UpstreamHealth,
    /// The supervised dashboard, if any.
    pub dashboard: Option<&'a ChildStatus>,
    /// The supervised worker, if any.
    pub worker: Option<&'a ChildStatus>,
    /// The worker's lease, with REDIS_URL.
    pub worker_lease: Option<&'a LeaseView>,
    pub hub: &'a dyn Hub,
    pub replicas: Option<&'a Replicas>,
}

pub fn respond(sources: Sources<'_>, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET /health");
    }
    let upstream = sources.upstream.state();
    let starting = upstream == UpstreamState::Starting;
    let redis_up = sources.hub.backplane_up();
    let report = HealthReport {
        // Redis down: still 200 (this replica serves its clients and the
        // dashboard; Railway must not restart it for Redis's sake), but
        // not "healthy": publishes answer 503 until Redis is back.
        status: match (starting, redis_up) {
            (true, _) => "starting",
            (false, Some(false)) => "degraded",
            (false, _) => "healthy",
        },
        connections: sources.connections,
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        websocket_enabled: sources.websocket_enabled,
        upstream,
        version: env!("CARGO_PKG_VERSION"),
        restarts: sources.dashboard.map(ChildStatus::restarts),
        redis: redis_up.map(|up| if up { "up" } else { "down" }),
        worker: sources.worker.map(|worker| WorkerReport {
            state: worker.state(),
            restarts: worker.restarts(),
            holder: sources.worker_lease.map(LeaseView::holder),
        }),
        replica: sources.replicas.map(Replicas::id),
        replicas: sources.replicas.map(Replicas::known),
    };
    let status = if starting {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut answer = response::json(status, &report);
    answer.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    answer
}
