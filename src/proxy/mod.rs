//! The reverse proxy: every path the gateway does not own goes to the
//! dashboard, bodies streamed both ways, WebSocket upgrades tunnelled.
//!
//! Owns: building the upstream request (always to `DASHBOARD_URL`, whatever
//! the Host header or an absolute-form URI says), the upstream timeout
//! (UPSTREAM_TIMEOUT_SECS, counted only while the dashboard is awaited: it
//! starts once the request body has been sent, see `outgoing`), refusing an
//! upgrade past MAX_TUNNELS, and the 502/503/504 answers.
//!
//! The same proxy forwards a request to another replica (see `replicas`):
//! [`Proxy::to_peer`] makes one for a peer's origin that shares this one's
//! tunnel count and limits, and [`Forwarding`] says whose forwarding headers
//! a request carries.
//!
//! Does not own: header rules (`headers`), keep-alive connections and
//! retries (`pool`), the request body's progress and lingering (`outgoing`),
//! byte copying after an upgrade (`tunnel`), or knowing whether the
//! dashboard is up (`upstream`).

pub mod headers;
mod outgoing;
mod pool;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, FutureExt};
use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{debug, warn};

use self::outgoing::{Outgoing, Progress};
use self::pool::{Pool, SendError};
use self::tunnel::Tunnels;
use crate::config::{Config, UpstreamUrl};
use crate::linger;
use crate::response::{self, Body};
use crate::shutdown::Shutdown;
use crate::timers::{self, Deadline};
use crate::upstream::{UpstreamHealth, UpstreamState};

/// A client that sends no byte of its request body for this long, while the
/// dashboard waits for it, gets 408 (nginx's `client_body_timeout`, 60 s).
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Proxy {
    /// Keep-alive HTTP/1.1 connections to the dashboard.
    pool: Arc<Pool>,
    /// Where every request goes.
    upstream: UpstreamUrl,
    /// The dashboard awaited this long (for the request head or body to be
    /// taken, or for the response head once the body is sent): 504.
    timeout: Duration,
    /// Proxied upgrades, against MAX_TUNNELS.
    tunnels: Arc<Tunnels>,
    /// How much of a body is read and dropped when answering early.
    linger_bytes: u64,
    /// Peers whose forwarding headers are believed.
    trusted_proxies: Vec<IpNet>,
    /// Told about every answer and every refusal.
    health: Arc<UpstreamHealth>,
    /// Tunnels are tracked here, since hyper stops tracking upgraded connections.
    shutdown: Shutdown,
}

/// Whose forwarding headers (X-Forwarded-*, X-Real-IP) a request carries,
/// and so who sets them.
pub enum Forwarding {
    /// A client's (or a trusted edge proxy's): set here from the peer's
    /// address and TRUSTED_PROXIES (`headers::set_forwarded`).
    Client,
    /// Another replica's, which proved the shared key: it set them from the
    /// client it received, so they pass as they are.
    Replica,
    /// A client's, going to another replica: set here as for the dashboard,
    /// plus these headers proving the hop (see `replicas`).
    ToReplica(Vec<(HeaderName, HeaderValue)>),
}

/// What [`Proxy::forward`] keeps of a request while the dashboard answers.
struct Sent {
    method: Method,
    path_and_query: Option<PathAndQuery>,
    wants_json: bool,
    started: Instant,
    /// The client's side of an upgrade, and its place under MAX_TUNNELS.
    client_upgrade: Option<OnUpgrade>,
    slot: Option<tunnel::Slot>,
}

/// Why a request could not be forwarded.
enum Failure {
    Refused(std::io::Error),
    TimedOut,
    /// The client stopped sending its body.
    ClientStalled,
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
            tunnels: Tunnels::new(config.max_tunnels, config.tunnel_idle, config.write_timeout),
            linger_bytes: linger::max_bytes(config.max_message_bytes),
            trusted_proxies: config.trusted_proxies.clone(),
            health,
            shutdown,
        }
    }

    /// The same proxy for another replica's origin: its own connections
    /// and its own up/down state (a dead replica is not a dead dashboard),
    /// the same tunnel count (MAX_TUNNELS is the gateway's) and limits.
    pub fn to_peer(&self, origin: UpstreamUrl) -> Proxy {
        Proxy {
            pool: Pool::new(origin.connect_to.clone(), POOL_IDLE_TIMEOUT, &self.shutdown),
            upstream: origin,
            timeout: self.timeout,
            tunnels: self.tunnels.clone(),
            linger_bytes: self.linger_bytes,
            trusted_proxies: self.trusted_proxies.clone(),
            health: Arc::new(UpstreamHealth::replica()),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Whether the origin answers, as the last exchange (or probe) found.
    pub fn health(&self) -> &UpstreamHealth {
        &self.health
    }

    /// Forwards one request and answers with the dashboard's response, or
    /// with the gateway's own 502/503/504 page.
    ///
    /// The upstream request is built and handed to the pool here, before
    /// the future exists; the future is the exchange and then
    /// [`Proxy::answer`], so it holds neither the client's request nor a
    /// copy of its own (as an `async fn` it held both, 2.5 KB).
    pub fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        forwarding: Forwarding,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        let started = Instant::now();
        let method = request.method().clone();
        let wants_json = response::wants_json(request.headers());
        let upgrading =
            request.version() == Version::HTTP_11 && headers::is_upgrade(request.headers());
        // Past MAX_TUNNELS an upgrade is refused before the dashboard hears of it.
        let slot = match upgrading.then(|| self.tunnels.reserve()) {
            None => None,
            Some(Some(slot)) => Some(slot),
            Some(None) => {
                let max = self.tunnels.max();
                // Not a warning: under a flood of upgrades it would be one per request.
                debug!(%method, path = request.uri().path(), max_tunnels = max, "tunnel refused: at MAX_TUNNELS");
                let message = format!(
                    "Too many proxied WebSocket connections (MAX_TUNNELS = {max}); try again later."
                );
                let mut reply =
                    response::error_page(StatusCode::SERVICE_UNAVAILABLE, &message, wants_json);
                reply
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Either::Left(std::future::ready(reply));
            }
        };
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));

        let (outgoing, progress) =
            self.upstream_request(request, peer, upgrading, started, forwarding);
        let sent = Sent {
            method,
            // For the logs: shares the request's bytes, no copy.
            path_and_query: outgoing.uri().path_and_query().cloned(),
            wants_json,
            started,
            client_upgrade,
            slot,
        };
        let exchange = self.exchange(outgoing, progress, started);
        Either::Right(exchange.map(move |result| self.answer(result, sent)))
    }

    /// The client's answer once the exchange is over: the dashboard's
    /// response (hop-by-hop headers out), a tunnel after a 101, or the
    /// gateway's page for a failure.
    fn answer(&self, result: Result<Response<Incoming>, Failure>, sent: Sent) -> Response<Body> {
        let Sent {
            method,
            path_and_query,
            wants_json,
            started,
            client_upgrade,
            slot,
        } = sent;
        let path = path_and_query.as_ref().map_or("/", PathAndQuery::path);
        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => {
                let reply = self.failure_reply(&failure, wants_json);
                let reason = match &failure {
                    Failure::Refused(error) => error_chain(error),
                    Failure::Broken(error) => error_chain(error),
                    Failure::TimedOut => format!("dashboard idle for {:?}", self.timeout),
                    Failure::ClientStalled => {
                        format!("client sent no body byte for {CLIENT_BODY_TIMEOUT:?}")
                    }
                };
                let upstream_ms = started.elapsed().as_secs_f64() * 1000.0;
                warn!(%method, path, status = reply.status().as_u16(), upstream_ms, reason, "proxy failed");
                return reply;
            }
        };
        self.health.mark_up();
        let status = answer.status();
        // The clock is read only when the line is written.
        debug!(%method, path, status = status.as_u16(), upstream_ms = started.elapsed().as_secs_f64() * 1000.0, "proxied");

        match (client_upgrade, slot) {
            (Some(client_upgrade), Some(slot)) if status == StatusCode::SWITCHING_PROTOCOLS => {
                tunnel::open(
                    client_upgrade,
                    answer,
                    &self.shutdown,
                    path.to_owned(),
                    slot,
                )
            }
            _ => {
                let (mut parts, body) = answer.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(parts, body.map_err(Into::into).boxed())
            }
        }
    }

    /// Sends `request` and waits for the response head, for at most
    /// UPSTREAM_TIMEOUT_SECS of waiting on the dashboard: from the start
    /// until it takes the request, from each frame of body it is handed
    /// until it takes the next, and from the body's end until the response
    /// head. While the client is slow to send its body, that timer does not
    /// run; a client silent for [`CLIENT_BODY_TIMEOUT`] mid-body gets 408. (A
    /// response head that comes before the body has been sent ends the wait.)
    ///
    /// Without a body (most requests) the future is the pool's send raced
    /// against one deadline ([`timers::Before`]); with one, the watching
    /// loop of [`Proxy::exchange_with_body`], boxed.
    fn exchange(
        &self,
        request: Request<Outgoing>,
        progress: Option<watch::Receiver<Progress>>,
        started: Instant,
    ) -> impl Future<Output = Result<Response<Incoming>, Failure>> + Send + '_ {
        let send = self.pool.send(request);
        match progress {
            // No body: the dashboard is awaited from the start.
            None => {
                let expired = Deadline::at((started + self.timeout).into());
                Either::Left(timers::before(send, expired).map(|sent| match sent {
                    Some(sent) => sent_or_failure(sent),
                    None => Err(Failure::TimedOut),
                }))
            }
            Some(progress) => Either::Right(Box::pin(self.exchange_with_body(send, progress))),
        }
    }

    /// [`Proxy::exchange`] of a request with a body: the deadline follows
    /// the body's progress.
    async fn exchange_with_body(
        &self,
        send: impl Future<Output = Result<Response<Incoming>, SendError>>,
        mut progress: watch::Receiver<Progress>,
    ) -> Result<Response<Incoming>, Failure> {
        tokio::pin!(send);
        // False once the body is gone (its last state stays readable).
        let mut watching = true;
        loop {
            let deadline = self.deadline(*progress.borrow_and_update());
            let expired = Deadline::at(deadline.into());
            tokio::select! {
                sent = &mut send => return sent_or_failure(sent),
                changed = progress.changed(), if watching => watching = changed.is_ok(),
                () = expired => {
                    // The dashboard may have taken more frames since, which
                    // moves the instant without waking this loop.
                    let current = *progress.borrow();
                    if self.deadline(current) <= Instant::now() {
                        return Err(match current {
                            Progress::Client(_) => Failure::ClientStalled,
                            _ => Failure::TimedOut,
                        });
                    }
                }
            }
        }
    }

    /// When the side awaited in `progress` has been waited on too long.
    fn deadline(&self, progress: Progress) -> Instant {
        match progress {
            Progress::Client(since) => since + CLIENT_BODY_TIMEOUT,
            Progress::Dashboard(since) | Progress::Sent(since) => since + self.timeout,
        }
    }

    /// The request as the dashboard sees it: same method, path, query and
    /// body; the client's Host; forwarding headers; no hop-by-hop headers.
    /// With a body, also the receiver of its progress.
    fn upstream_request(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        upgrading: bool,
        started: Instant,
        forwarding: Forwarding,
    ) -> (Request<Outgoing>, Option<watch::Receiver<Progress>>) {
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

        headers::strip_hop_by_hop(&mut parts.headers, upgrading);
        match forwarding {
            Forwarding::Replica => {}
            Forwarding::Client | Forwarding::ToReplica(_) => {
                let peer_ip = peer.ip().to_canonical();
                let trusted = self
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&peer_ip));
                headers::set_forwarded(&mut parts.headers, peer_ip, trusted, original_host);
            }
        }
        if let Forwarding::ToReplica(hop) = forwarding {
            for (name, value) in hop {
                parts.headers.insert(name, value);
            }
        }
        // Asked only of a body: an empty one has nothing to linger on
        // (`Outgoing::new`), and a lookup per GET is not free.
        let lingers =
            !hyper::body::Body::is_end_stream(&body) && !linger::expects_continue(&parts.headers);
        let (body, progress) =
            Outgoing::new(body, started, lingers, self.linger_bytes, &self.shutdown);
        (Request::from_parts(parts, body), progress)
    }

    fn failure_reply(&self, failure: &Failure, wants_json: bool) -> Response<Body> {
        match failure {
            Failure::TimedOut => response::error_page(
                StatusCode::GATEWAY_TIMEOUT,
                "The dashboard did not answer in time.",
                wants_json,
            ),
            Failure::ClientStalled => response::error_page(
                StatusCode::REQUEST_TIMEOUT,
                "The request body stopped arriving.",
                wants_json,
            ),
            Failure::Refused(_) if self.health.state() == UpstreamState::Starting => {
                response::starting_page(wants_json, self.health.crash_loop())
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

/// What the pool's send came to, as the proxy counts it.
fn sent_or_failure(
    sent: Result<Response<Incoming>, SendError>,
) -> Result<Response<Incoming>, Failure> {
    match sent {
        Ok(answer) => Ok(answer),
        Err(SendError::Connect(error)) => Err(Failure::Refused(error)),
        Err(SendError::Exchange(error)) => Err(Failure::Broken(error)),
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
