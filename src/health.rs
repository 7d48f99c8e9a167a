//! `GET /health`: Railway's health check and an operator's first look.
//!
//! 200 `{"status":"healthy",…}` normally; 503 `{"status":"starting",…}` while
//! a configured dashboard has not answered once, so a deployment is not
//! marked ready before its dashboard is.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::response::{self, Body};
use crate::server::Gateway;
use crate::upstream::UpstreamState;

#[derive(Serialize)]
struct HealthReport {
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
}

pub fn respond(gateway: &Gateway, method: &Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET /health");
    }
    let upstream = gateway.upstream.state();
    let starting = upstream == UpstreamState::Starting;
    let report = HealthReport {
        status: if starting { "starting" } else { "healthy" },
        connections: gateway.clients.load(Ordering::Relaxed),
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        websocket_enabled: gateway.config.websocket_enabled,
        upstream,
        version: env!("CARGO_PKG_VERSION"),
        restarts: gateway
            .dashboard_restarts
            .as_ref()
            .map(|restarts| restarts.load(Ordering::Relaxed)),
        redis: gateway
            .hub
            .backplane_up()
            .map(|up| if up { "up" } else { "down" }),
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
