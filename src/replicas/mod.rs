//! Sticky dashboard sessions across replicas (SPEC.md "Several replicas,
//! dashboard included"); present only with REDIS_URL and a dashboard.
//!
//! Streamlit keeps a browser's session in one process, and Railway's edge
//! spreads requests over replicas at random. So the first proxied answer a
//! replica serves pins the browser to it with a cookie
//! ([`COOKIE`]`=<replica id>`), and a replica that receives a request
//! pinned to another live replica forwards it there over the private
//! network — through the same proxy code as the dashboard, HTTP and
//! WebSocket alike, so every limit holds on both hops. A cookie naming a
//! replica that is gone (unknown, expired from Redis, or refusing
//! connections) is served here and pinned here again.
//!
//! The hop carries two headers: [`KEY_HEADER`] with the key the replicas
//! share through Redis, compared in constant time, and [`HOP_HEADER`]
//! naming the replica that forwarded. A request carrying either is served
//! here whatever its cookie says (a hop is never forwarded again, so no
//! loop), and only with the right key: without it, 403. With the key the
//! forwarding headers the first replica set (the client's address, scheme
//! and host as it saw them) pass to the dashboard as they are, and the site
//! password is not asked again.
//!
//! Owns: this replica's id and cookie, the table of live peers, the shared
//! key, the decision per request ([`Replicas::route`]), the re-pinning
//! cookie and the forwarded count. Does not own: Redis (`registry` keeps
//! the table and the key up to date), detecting REPLICA_URL (`address`), or
//! proxying itself (`proxy`).

pub mod address;
mod registry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::config::UpstreamUrl;
use crate::proxy::{Forwarding, Proxy};
use crate::response::{self, Body};
use crate::upstream::UpstreamState;

pub use registry::start;

/// The cookie naming the replica that holds a browser's dashboard session.
pub const COOKIE: &str = "switchyard_replica";

/// The replicas' shared key, on a forwarded request.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-replica-key");

/// The id of the replica that forwarded a request: the hop marker.
pub const HOP_HEADER: HeaderName = HeaderName::from_static("x-switchyard-hop");

/// Longest replica id accepted from a cookie or from Redis.
const MAX_ID_LEN: usize = 32;

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// This replica, the others it knows, and what they share.
pub struct Replicas {
    /// The cookie value that pins a session here (16 hex digits).
    id: String,
    /// [`HOP_HEADER`]'s value on requests this replica forwards.
    id_header: HeaderValue,
    /// `Set-Cookie` naming this replica, plain and with `Secure`.
    pin: [HeaderValue; 2],
    /// Where the others reach this one, as registered in Redis.
    url: UpstreamUrl,
    /// The live other replicas by id; read per pinned request, written by
    /// the registry every few seconds, never held across an await.
    peers: RwLock<HashMap<String, Entry>>,
    /// The key shared through Redis; `None` until Redis has answered once.
    key: RwLock<Option<HeaderValue>>,
    /// The dashboard's proxy, of which each peer's is a copy.
    proxy: Arc<Proxy>,
    /// Peers whose X-Forwarded-Proto is believed (for the cookie's Secure).
    trusted_proxies: Vec<IpNet>,
    /// Requests forwarded to another replica (metrics).
    forwarded: AtomicU64,
}

/// Another replica.
pub struct Peer {
    /// The proxy to its origin, with its own connections and up/down state.
    proxy: Proxy,
    /// Its REPLICA_URL as registered, to notice a change.
    url: String,
    /// `host:port` of that URL, for the registry's probe.
    connect_to: String,
}

/// A peer in the table.
struct Entry {
    peer: Arc<Peer>,
    /// When Redis last listed it; with Redis unreachable it is forgotten
    /// once its registration would have expired.
    seen: Instant,
}

/// Where a failed GET is sent again (see [`Replicas::moved`]).
pub struct Retry {
    /// The request's own path and query.
    location: HeaderValue,
    /// The cookie gets `Secure`.
    secure: bool,
}

/// What to do with one proxied request.
pub enum Route {
    /// Serve it here, through the dashboard's proxy.
    Local {
        forwarding: Forwarding,
        /// The answer carries this replica's cookie (the request's named
        /// no live replica, or another one).
        pin: bool,
        /// The cookie gets `Secure` (the client came over https).
        secure: bool,
        /// Another replica forwarded it, with the key: already admitted there.
        from_replica: bool,
    },
    /// Forward it to the replica holding the session.
    Peer(Arc<Peer>, Forwarding),
    /// A forwarded request without the right key.
    Refuse(Response<Body>),
}

impl Replicas {
    /// A fresh id and no peers yet; `registry::start` fills them in.
    pub fn new(url: UpstreamUrl, proxy: Arc<Proxy>, trusted_proxies: Vec<IpNet>) -> Replicas {
        let id = format!("{:016x}", random_u64());
        let cookie = |secure: &str| {
            let text = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax{secure}");
            HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
        };
        Replicas {
            id_header: HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("")),
            pin: [cookie(""), cookie("; Secure")],
            id,
            url,
            peers: RwLock::new(HashMap::new()),
            key: RwLock::new(None),
            proxy,
            trusted_proxies,
            forwarded: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// Replicas this one knows alive, itself included.
    pub fn known(&self) -> usize {
        read(&self.peers)
            .values()
            .filter(|entry| entry.peer.is_live())
            .count()
            + 1
    }

    /// Requests forwarded to another replica so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Decides where `request` is served. A valid hop loses its hop headers
    /// here, so the dashboard never sees the key.
    pub fn route<B>(&self, request: &mut Request<B>, client: SocketAddr) -> Route {
        let headers = request.headers_mut();
        if headers.contains_key(KEY_HEADER) || headers.contains_key(HOP_HEADER) {
            return self.hop(headers);
        }
        let pinned = pinned_replica(headers);
        if let Some(id) = pinned.as_deref().filter(|id| *id != self.id) {
            let peer = read(&self.peers).get(id).map(|entry| entry.peer.clone());
            let hop = read(&self.key)
                .clone()
                .map(|key| vec![(KEY_HEADER, key), (HOP_HEADER, self.id_header.clone())]);
            if let (Some(peer), Some(hop)) = (peer.filter(|p| p.is_live()), hop) {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                return Route::Peer(peer, Forwarding::ToReplica(hop));
            }
        }
        let peer_ip = client.ip().to_canonical();
        let trusted = self
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer_ip));
        Route::Local {
            forwarding: Forwarding::Client,
            pin: pinned.as_deref() != Some(self.id.as_str()),
            secure: trusted && says_https(headers),
            from_replica: false,
        }
    }

    /// A request claiming to come from another replica.
    fn hop(&self, headers: &mut HeaderMap) -> Route {
        let presented = headers.get(KEY_HEADER).map(HeaderValue::as_bytes);
        let key = read(&self.key).clone();
        let valid = match (presented, &key) {
            (Some(presented), Some(key)) => bool::from(presented.ct_eq(key.as_bytes())),
            _ => false,
        };
        if !valid {
            return Route::Refuse(response::json_error(
                StatusCode::FORBIDDEN,
                "a forwarded request needs the replicas' key (x-switchyard-replica-key)",
            ));
        }
        let pinned = pinned_replica(headers);
        headers.remove(KEY_HEADER);
        headers.remove(HOP_HEADER);
        Route::Local {
            forwarding: Forwarding::Replica,
            pin: pinned.as_deref() != Some(self.id.as_str()),
            secure: says_https(headers),
            from_replica: true,
        }
    }

    /// For a GET or HEAD without a body and not an upgrade: what
    /// [`Replicas::moved`] needs should the pinned replica fail it.
    pub fn retry<B>(&self, request: &Request<B>, client: SocketAddr) -> Option<Retry> {
        let plain = matches!(*request.method(), Method::GET | Method::HEAD)
            && !request.headers().contains_key(header::UPGRADE)
            && !request.headers().contains_key(header::CONTENT_LENGTH)
            && !request.headers().contains_key(header::TRANSFER_ENCODING);
        if !plain {
            return None;
        }
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        Some(Retry {
            location: HeaderValue::from_str(target).ok()?,
            secure: self.is_trusted(client) && says_https(request.headers()),
        })
    }

    /// The answer to a GET whose replica just failed (it died since the
    /// registry's last round): `307` to the same URL, pinned here, so the
    /// browser asks again and this replica serves it — a page load or an
    /// image, not a 502 page. (A request with a body, or an upgrade, keeps
    /// its 502: its body is gone, and Streamlit retries its WebSocket
    /// itself.)
    pub fn moved(&self, retry: Retry) -> Response<Body> {
        let mut answer = Response::new(response::empty());
        *answer.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        let headers = answer.headers_mut();
        headers.insert(header::LOCATION, retry.location);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.pin(&mut answer, retry.secure);
        answer
    }

    fn is_trusted(&self, client: SocketAddr) -> bool {
        let peer_ip = client.ip().to_canonical();
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&peer_ip))
    }

    /// Adds this replica's cookie to a locally served answer.
    pub fn pin(&self, answer: &mut Response<Body>, secure: bool) {
        answer
            .headers_mut()
            .append(header::SET_COOKIE, self.pin[usize::from(secure)].clone());
    }

    /// Replaces the table with what Redis listed (`id → url`, this replica
    /// left out), keeping the peers whose URL did not change (and so their
    /// connections and up/down state).
    fn update(&self, listed: Vec<(String, UpstreamUrl)>, now: Instant) {
        let mut peers = write(&self.peers);
        let mut table = HashMap::with_capacity(listed.len());
        for (id, url) in listed {
            let text = url.to_string();
            let peer = match peers.remove(&id) {
                Some(entry) if entry.peer.url == text => entry.peer,
                _ => Arc::new(Peer {
                    connect_to: url.connect_to.clone(),
                    proxy: self.proxy.to_peer(url),
                    url: text,
                }),
            };
            table.insert(id, Entry { peer, seen: now });
        }
        *peers = table;
    }

    /// With Redis unreachable: forgets the peers whose registration would
    /// have expired by now.
    fn expire(&self, now: Instant) {
        write(&self.peers).retain(|_, entry| now.duration_since(entry.seen) < registry::TTL);
    }

    /// The peers found refusing connections, for the registry to probe.
    fn down_peers(&self) -> Vec<Arc<Peer>> {
        read(&self.peers)
            .values()
            .filter(|entry| !entry.peer.is_live())
            .map(|entry| entry.peer.clone())
            .collect()
    }

    fn set_key(&self, key: HeaderValue) {
        let mut current = write(&self.key);
        if current.as_ref() != Some(&key) {
            *current = Some(key);
        }
    }
}

impl Peer {
    /// Registered, and not found refusing connections since.
    fn is_live(&self) -> bool {
        self.proxy.health().state() != UpstreamState::Down
    }

    /// Forwards `request` to this replica. A 502 (it refused the
    /// connection, or closed it without an answer, or its own dashboard is
    /// gone) counts it down: its sessions are served where they land until
    /// the registry's probe finds it accepting again.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        hop: Forwarding,
    ) -> Response<Body> {
        let answer = self.proxy.forward(request, client, hop).await;
        if answer.status() == StatusCode::BAD_GATEWAY {
            self.proxy.health().mark_down("replica failed");
        }
        answer
    }
}

/// The replica id in the request's cookie, if any (well-formed only).
fn pinned_replica(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id.trim().trim_matches('"'))
        .filter(|id| valid_id(id))
        .map(str::to_owned)
}

/// A replica id: 1–32 ASCII letters and digits.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn says_https(headers: &HeaderMap) -> bool {
    headers
        .get(X_FORWARDED_PROTO)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// 64 bits from the operating system's generator; the clock and the pid
/// through a randomly keyed hash if it fails (ids need no secrecy).
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::hash::BuildHasher;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
    })
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::COOKIE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_pinned_replica_is_read_from_any_cookie_header() {
        let headers = cookies(&["theme=dark", "a=1; switchyard_replica=00ff12; b=2"]);
        assert_eq!(pinned_replica(&headers).as_deref(), Some("00ff12"));
        let headers = cookies(&["switchyard_replica=\"abc\""]);
        assert_eq!(pinned_replica(&headers).as_deref(), Some("abc"));
    }

    #[test]
    fn a_malformed_replica_cookie_names_no_replica() {
        for value in [
            "switchyard_replica=",
            "switchyard_replica=../../etc",
            "switchyard_replica=0123456789abcdef0123456789abcdef0",
            "xswitchyard_replica=abc",
        ] {
            assert_eq!(pinned_replica(&cookies(&[value])), None, "{value}");
        }
    }

    #[test]
    fn https_is_read_from_the_first_forwarded_proto() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("HTTPS, http"));
        assert!(says_https(&headers));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        assert!(!says_https(&headers));
    }
}
