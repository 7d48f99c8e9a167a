//! The reverse proxy: every path the gateway does not own goes to the
//! dashboard, bodies streamed both ways, WebSocket upgrades tunnelled.
//!
//! Owns: building the upstream request (always to `DASHBOARD_URL`, whatever
//! the Host header or an absolute-form URI says), the response-head timeout,
//! and the 502/503/504 answers.
//!
//! Does not own: header rules (`headers`), keep-alive connections (`pool`),
//! byte copying after an upgrade (`tunnel`), or knowing whether the
//! dashboard is up (`upstream`).

pub mod headers;
mod pool;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ipnet::IpNet;
use tracing::{debug, warn};

use self::pool::{Pool, SendError};
use crate::config::{Config, UpstreamUrl};
use crate::response::{self, Body};
use crate::shutdown::Shutdown;
use crate::upstream::{UpstreamHealth, UpstreamState};

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Proxy {
    /// Keep-alive HTTP/1.1 connections to the dashboard.
    pool: Arc<Pool>,
    /// Where every request goes.
    upstream: UpstreamUrl,
    /// No response head in this time: 504.
    timeout: Duration,
    /// Peers whose forwarding headers are believed.
    trusted_proxies: Vec<IpNet>,
    /// Told about every answer and every refusal.
    health: Arc<UpstreamHealth>,
    /// Tunnels are tracked here, since hyper stops tracking upgraded connections.
    shutdown: Shutdown,
}

/// Why a request could not be forwarded.
enum Failure {
    Refused(std::io::Error),
    TimedOut,
    Broken(hyper::Error),
}

impl Proxy {
    pub fn new(
        config: &Config,
        upstream: UpstreamUrl,
        health: Arc<UpstreamHealth>,
        shutdown: Shutdown,
    ) -> Proxy {
        let pool = Pool::new(upstream.connect_to.clone(), POOL_IDLE_TIMEOUT, &shutdown);
        Proxy {
            pool,
            upstream,
            timeout: config.upstream_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
            health,
            shutdown,
        }
    }

    /// Forwards one request and answers with the dashboard's response, or
    /// with the gateway's own 502/503/504 page.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let wants_json = response::wants_json(request.headers());
        let upgrading =
            request.version() == Version::HTTP_11 && headers::is_upgrade(request.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));

        let outgoing = self.upstream_request(request, peer, upgrading);

        // For the logs: shares the request's bytes, no copy.
        let path_and_query = outgoing.uri().path_and_query().cloned();
        let path = path_and_query.as_ref().map_or("/", PathAndQuery::path);

        let result = match tokio::time::timeout(self.timeout, self.pool.send(outgoing)).await {
            Err(_) => Err(Failure::TimedOut),
            Ok(Err(SendError::Connect(error))) => Err(Failure::Refused(error)),
            Ok(Err(SendError::Exchange(error))) => Err(Failure::Broken(error)),
            Ok(Ok(answer)) => Ok(answer),
        };
        let upstream_ms = started.elapsed().as_secs_f64() * 1000.0;

        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => {
                let reply = self.failure_reply(&failure, wants_json);
                let reason = match &failure {
                    Failure::Refused(error) => error_chain(error),
                    Failure::Broken(error) => error_chain(error),
                    Failure::TimedOut => format!("no response head within {:?}", self.timeout),
                };
                warn!(%method, path, status = reply.status().as_u16(), upstream_ms, reason, "proxy failed");
                return reply;
            }
        };
        self.health.mark_up();
        let status = answer.status();
        debug!(%method, path, status = status.as_u16(), upstream_ms, "proxied");

        match client_upgrade {
            Some(client_upgrade) if status == StatusCode::SWITCHING_PROTOCOLS => {
                tunnel::open(client_upgrade, answer, &self.shutdown, path.to_owned())
            }
            _ => {
                let (mut parts, body) = answer.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(parts, body.map_err(Into::into).boxed())
            }
        }
    }

    /// The request as the dashboard sees it: same method, path, query and
    /// body; the client's Host; forwarding headers; no hop-by-hop headers.
    fn upstream_request(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        upgrading: bool,
    ) -> Request<Incoming> {
        let (mut parts, body) = request.into_parts();
        // HTTP/2 clients name the host in :authority, not in a Host header.
        let original_host = match parts.headers.get(HOST) {
            Some(host) => Some(host.clone()),
            None => {
                let authority = parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
                // Neither: the dashboard still gets a Host, its own.
                let host = authority
                    .clone()
                    .or_else(|| HeaderValue::from_str(self.upstream.authority.as_str()).ok());
                if let Some(host) = host {
                    parts.headers.insert(HOST, host);
                }
                authority
            }
        };
        // Origin-form (`/path?query`) on the dashboard's connection: an
        // absolute-form target's scheme and authority are dropped here.
        let path_and_query = std::mem::take(&mut parts.uri)
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path_and_query);
        parts.version = Version::HTTP_11;

        let peer_ip = peer.ip().to_canonical();
        let trusted = self
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer_ip));
        headers::strip_hop_by_hop(&mut parts.headers, upgrading);
        headers::set_forwarded(&mut parts.headers, peer_ip, trusted, original_host);
        Request::from_parts(parts, body)
    }

    fn failure_reply(&self, failure: &Failure, wants_json: bool) -> Response<Body> {
        match failure {
            Failure::TimedOut => response::error_page(
                StatusCode::GATEWAY_TIMEOUT,
                "The dashboard did not answer in time.",
                wants_json,
            ),
            Failure::Refused(_) if self.health.state() == UpstreamState::Starting => {
                response::starting_page(wants_json)
            }
            Failure::Refused(_) => {
                self.health.mark_down("connection refused");
                response::error_page(
                    StatusCode::BAD_GATEWAY,
                    "The dashboard is not reachable.",
                    wants_json,
                )
            }
            Failure::Broken(_) => response::error_page(
                StatusCode::BAD_GATEWAY,
                "The dashboard closed the connection without an answer.",
                wants_json,
            ),
        }
    }
}

/// The error and its sources on one line, for the log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
