//! `GET /health`: Railway's health check and an operator's first look.
//!
//! 200 `{"status":"healthy",…}` normally; 503 `{"status":"starting",…}` while
//! a configured dashboard has not answered once, so a deployment is not
//! marked ready before its dashboard is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::hub::Hub;
use crate::replicas::Replicas;
use crate::response::{self, Body};
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
    /// Only with sticky sessions (REDIS_URL and a dashboard): this
    /// replica's id (the session cookie's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    /// Only with sticky sessions: the live replicas this one knows, itself
    /// included.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<usize>,
}

/// What `/health` reports on, each from the module that counts it.
pub struct Sources<'a> {
    /// Live broadcaster clients (WebSocket, SSE, long-poll waiters).
    pub connections: usize,
    pub websocket_enabled: bool,
    pub upstream: &'a UpstreamHealth,
    pub restarts: Option<&'a AtomicU64>,
    pub hub: &'a dyn Hub,
    pub replicas: Option<&'a Replicas>,
}

pub fn respond(sources: Sources<'_>, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET /health");
    }
    let upstream = sources.upstream.state();
    let starting = upstream == UpstreamState::Starting;
    let report = HealthReport {
        status: if starting { "starting" } else { "healthy" },
        connections: sources.connections,
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        websocket_enabled: sources.websocket_enabled,
        upstream,
        version: env!("CARGO_PKG_VERSION"),
        restarts: sources
            .restarts
            .map(|restarts| restarts.load(Ordering::Relaxed)),
        redis: sources
            .hub
            .backplane_up()
            .map(|up| if up { "up" } else { "down" }),
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
