//! Who may read and who may publish.
//!
//! Owns: the one [`Access`] policy built from the config — AUTH_SECRET's
//! access tokens ([`token`]), PUBLISH_TOKEN, the loopback exemption, and the
//! site password ([`basic`]); where a request presents a token
//! (`Authorization: Bearer`, `?token=`); the effective client address
//! (after trusted X-Forwarded-For; loopback only from this host); which
//! credentials are the gateway's own and so never reach the dashboard
//! ([`Access::scrub_for_dashboard`], which also sets X-Forwarded-User); and
//! how a refusal looks (401/403 JSON, or a 4001/4003 close code on a live
//! WebSocket).
//!
//! Does not own: when each route asks (the handlers call [`Access::reader`]
//! or [`Access::publisher`] before they do anything) or what a pattern
//! covers (`hub::topics::covers`).
//!
//! Without AUTH_SECRET every read is open, as before; with it every read
//! path needs a token and reads only what its `subscribe` patterns cover
//! (`admin` covers everything).

pub mod basic;
pub mod token;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use serde::Serialize;

use crate::config::{Config, Secret};
use crate::hub::topics::{self, Pattern, Topic};
use crate::response::{self, Body};

pub use token::{Grant, TokenError, Verifier};

/// The publish route, which loopback may use without the site password.
const PUBLISH_PATH: &str = "/_switchyard/publish";

/// WebSocket close code: no token, a bad one, or one that expired.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// WebSocket close code: the token does not allow what was asked.
pub const CLOSE_FORBIDDEN: u16 = 4003;

/// The access policy of one gateway.
pub struct Access {
    tokens: Option<Verifier>,
    publish_token: Option<Secret>,
    trusted_proxies: Vec<IpNet>,
    /// BASIC_AUTH, when set.
    pub site: Option<basic::SitePassword>,
}

/// Who is reading.
#[derive(Debug, Clone)]
pub enum Reader {
    /// No AUTH_SECRET (reads are open), or the engine's PUBLISH_TOKEN:
    /// everything, with no expiry.
    Anyone,
    /// A verified token.
    Granted(Grant),
}

/// Who is publishing.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// PUBLISH_TOKEN, an admin token, or loopback without PUBLISH_TOKEN.
    Anything,
    /// A token with `publish` patterns.
    Scoped(Grant),
    /// Nobody: the reason.
    Refused(Denied),
}

/// Why a request or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token where one is needed.
    Missing,
    /// A token that did not verify, or expired.
    Token(TokenError),
    /// No valid publish credential (PUBLISH_TOKEN, a token with `publish`,
    /// or loopback without PUBLISH_TOKEN).
    NotPublisher { publish_token_set: bool },
    /// A valid token that does not cover this pattern or topic.
    Forbidden(String),
}

impl Access {
    pub fn new(config: &Config) -> Access {
        Access {
            tokens: config
                .auth_secret
                .as_ref()
                .map(|secret| Verifier::new(secret.expose())),
            publish_token: config.publish_token.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            site: basic::SitePassword::new(&config.basic_auth),
        }
    }

    /// True when AUTH_SECRET is set: every read path needs a token.
    pub fn reads_need_token(&self) -> bool {
        self.tokens.is_some()
    }

    /// Verifies an access token (an error when AUTH_SECRET is unset).
    pub fn verify(&self, token: &str) -> Result<Grant, Denied> {
        match &self.tokens {
            Some(verifier) => verifier.verify(token).map_err(Denied::Token),
            None => Err(Denied::Token(TokenError::Invalid(
                "AUTH_SECRET is not set on this gateway",
            ))),
        }
    }

    /// Who reads, given the token the request presented (see
    /// [`presented`]). Without AUTH_SECRET anyone reads and the token is
    /// not looked at. PUBLISH_TOKEN reads everything too: it is the
    /// engine's credential, and the engine is where the data comes from (a
    /// Python `Subscriber` beside it needs no second secret).
    pub fn reader(&self, token: Option<&str>) -> Result<Reader, Denied> {
        if self.tokens.is_none() {
            return Ok(Reader::Anyone);
        }
        match token {
            None => Err(Denied::Missing),
            Some(token) if self.is_publish_token(token) => Ok(Reader::Anyone),
            Some(token) => self.verify(token).map(Reader::Granted),
        }
    }

    fn is_publish_token(&self, token: &str) -> bool {
        self.publish_token.as_ref().is_some_and(|expected| {
            constant_time_eq(token.as_bytes(), expected.expose().as_bytes())
        })
    }

    /// Who publishes: the token presented (PUBLISH_TOKEN or an access
    /// token), else loopback when PUBLISH_TOKEN is unset. `client` is the
    /// effective client address ([`Access::client_address`]).
    pub fn publisher(&self, client: IpAddr, token: Option<&str>) -> Publisher {
        let verified = match (&self.tokens, token) {
            (Some(verifier), Some(given)) if !self.is_publish_token(given) => {
                Some(verifier.verify(given))
            }
            _ => None,
        };
        self.publisher_from(client, token, verified)
    }

    /// [`Access::publisher`] for a token whose verification is already done
    /// (`verified`: its outcome; `None` when it is PUBLISH_TOKEN, absent, or
    /// AUTH_SECRET is unset), so a connection that was just admitted as a
    /// reader does not verify the same token twice.
    pub fn publisher_from(
        &self,
        client: IpAddr,
        token: Option<&str>,
        verified: Option<Result<Grant, TokenError>>,
    ) -> Publisher {
        if token.is_some_and(|given| self.is_publish_token(given)) {
            return Publisher::Anything;
        }
        if let Some(verified) = verified {
            match verified {
                Ok(grant) if grant.admin => return Publisher::Anything,
                // A token without `publish` patterns is still a token: its
                // publishes are refused topic by topic (403), except from the
                // engine's loopback without PUBLISH_TOKEN.
                Ok(_) if self.publish_token.is_none() && is_loopback(client) => {
                    return Publisher::Anything
                }
                Ok(grant) => return Publisher::Scoped(grant),
                Err(error) if self.publish_token.is_some() || !is_loopback(client) => {
                    return Publisher::Refused(Denied::Token(error))
                }
                Err(_) => {}
            }
        }
        if self.publish_token.is_none() && is_loopback(client) {
            return Publisher::Anything;
        }
        Publisher::Refused(Denied::NotPublisher {
            publish_token_set: self.publish_token.is_some(),
        })
    }

    /// True when `token` is a valid bearer credential of any kind
    /// (PUBLISH_TOKEN or an access token): such a request passes the site
    /// password.
    pub fn is_valid_bearer(&self, token: &str) -> bool {
        self.is_publish_token(token)
            || self
                .tokens
                .as_ref()
                .is_some_and(|v| v.verify(token).is_ok())
    }

    /// BASIC_AUTH in front of a request (the router skips `/health`). It
    /// passes without Basic credentials when it carries a valid bearer
    /// token (PUBLISH_TOKEN or an access token, header or `?token=`), and
    /// when it is a publish from a loopback client while PUBLISH_TOKEN is
    /// unset, so the engine beside the gateway keeps working.
    ///
    /// `Ok` holds the signed-in user when Basic credentials passed.
    pub async fn pass_site<B>(
        &self,
        peer: SocketAddr,
        request: &Request<B>,
    ) -> Result<Option<String>, Response<Body>> {
        let Some(site) = &self.site else {
            return Ok(None);
        };
        let headers = request.headers();
        let query_token = query_token(request.uri().query());
        if bearer(headers)
            .or(query_token.as_deref())
            .is_some_and(|token| self.is_valid_bearer(token))
        {
            return Ok(None);
        }
        let client = self.client_address(peer, headers);
        let is_publish = request.uri().path() == PUBLISH_PATH;
        if is_publish && self.publish_token.is_none() && is_loopback(client) {
            return Ok(None);
        }
        // Boxed: the check (a password hash on the blocking pool) is a
        // large future, and inline every request's future would carry it,
        // password or not (`server::proxied` is allocated per request).
        Box::pin(site.check(client, headers)).await.map(Some)
    }

    /// Makes a request fit for the dashboard: removes the credentials that
    /// are the gateway's (the Basic `Authorization` when BASIC_AUTH is set;
    /// PUBLISH_TOKEN or a token signed with AUTH_SECRET, expired or not, in
    /// `Authorization: Bearer` or `?token=`), always removes a client-sent
    /// `X-Forwarded-User`, and sets it to `user` (who passed BASIC_AUTH).
    /// Credentials that are not the gateway's (the dashboard's own bearer
    /// token, a Basic header without BASIC_AUTH) pass unchanged.
    pub fn scrub_for_dashboard<B>(&self, request: &mut Request<B>, user: Option<&str>) {
        let headers = request.headers_mut();
        if headers.contains_key(&X_FORWARDED_USER) {
            headers.remove(&X_FORWARDED_USER);
        }
        if headers.contains_key(header::AUTHORIZATION) {
            let all = headers.get_all(header::AUTHORIZATION);
            let total = all.iter().count();
            let kept: Vec<HeaderValue> = all
                .iter()
                .filter(|value| !self.is_own_authorization(value))
                .cloned()
                .collect();
            if kept.len() != total {
                headers.remove(header::AUTHORIZATION);
                for value in kept {
                    headers.append(header::AUTHORIZATION, value);
                }
            }
        }
        if let Some(value) = user.and_then(|u| HeaderValue::from_bytes(u.as_bytes()).ok()) {
            headers.insert(X_FORWARDED_USER, value);
        }
        let Some(query) = request.uri().query().filter(|q| q.contains("token=")) else {
            return;
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("token", value)) => !self
                    .is_own_token(&percent_encoding::percent_decode_str(value).decode_utf8_lossy()),
                _ => true,
            })
            .collect();
        if kept.len() == query.split('&').count() {
            return;
        }
        let path = request.uri().path();
        let path_and_query = match kept.join("&") {
            rest if rest.is_empty() => path.to_owned(),
            rest => format!("{path}?{rest}"),
        };
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        // Taking pairs out of a valid query leaves a valid one; should it
        // not, the whole query goes rather than a credential.
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    /// True for an `Authorization` value the gateway consumes.
    fn is_own_authorization(&self, value: &HeaderValue) -> bool {
        let Ok(text) = value.to_str() else {
            return false;
        };
        match text.trim().split_once(' ') {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("basic") => self.site.is_some(),
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.is_own_token(token.trim())
            }
            _ => false,
        }
    }

    /// PUBLISH_TOKEN, or a token signed with AUTH_SECRET (expired or not).
    fn is_own_token(&self, token: &str) -> bool {
        self.is_publish_token(token)
            || self
                .tokens
                .as_ref()
                .is_some_and(|verifier| verifier.signed_here(token))
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the nearest X-Forwarded-For hop that is not (read right to
    /// left, since each proxy appends). A local reverse proxy therefore
    /// does not make its clients "loopback". An unreadable hop counts as
    /// an unknown, non-loopback address. Only X-Forwarded-For is read
    /// (never X-Real-IP or `Forwarded`), and a trusted proxy vouches for
    /// where a request came from, never for "this host": a loopback hop
    /// counts only behind a chain of loopback peers, so a peer that is not
    /// itself on loopback never makes a loopback client (the publish
    /// exemption).
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_address(peer.ip(), headers, &self.trusted_proxies)
    }
}

impl Reader {
    /// True when this reader may subscribe to `pattern`.
    pub fn may_read(&self, pattern: &Pattern) -> bool {
        match self {
            Reader::Anyone => true,
            Reader::Granted(grant) => grant.admin || topics::covers(&grant.subscribe, pattern),
        }
    }

    /// The first of `patterns` this reader may not subscribe to.
    pub fn first_forbidden<'a>(&self, patterns: &'a [Pattern]) -> Option<&'a Pattern> {
        patterns.iter().find(|p| !self.may_read(p))
    }

    /// What a request that names no topics subscribes to: everything, or
    /// a scoped token's own patterns.
    pub fn default_patterns(&self) -> Vec<Pattern> {
        match self {
            Reader::Granted(grant) if !grant.admin => grant.subscribe.clone(),
            _ => vec![Pattern::everything()],
        }
    }

    /// Console and metrics: open without AUTH_SECRET, else admin tokens.
    pub fn is_admin(&self) -> bool {
        match self {
            Reader::Anyone => true,
            Reader::Granted(grant) => grant.admin,
        }
    }

    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Reader::Anyone => None,
            Reader::Granted(grant) => Some(grant),
        }
    }
}

impl Publisher {
    /// True when this publisher may publish to `topic`.
    pub fn may_publish(&self, topic: &Topic) -> bool {
        match self {
            Publisher::Anything => true,
            Publisher::Scoped(grant) => topics::any_matches(&grant.publish, topic),
            Publisher::Refused(_) => false,
        }
    }
}

impl Denied {
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The code in the JSON body and in `error` frames.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::Missing => "token_missing",
            Denied::Token(TokenError::Expired) => "token_expired",
            Denied::Token(TokenError::Invalid(_)) => "token_invalid",
            Denied::NotPublisher { .. } => "not_publisher",
            Denied::Forbidden(_) => "forbidden",
        }
    }

    /// The WebSocket close code for this refusal.
    pub fn close_code(&self) -> u16 {
        match self {
            Denied::Forbidden(_) => CLOSE_FORBIDDEN,
            _ => CLOSE_UNAUTHORIZED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Denied::Missing => {
                "a token is needed (Authorization: Bearer, ?token=, or an auth frame)".to_owned()
            }
            Denied::Token(error) => error.to_string(),
            Denied::NotPublisher {
                publish_token_set: true,
            } => "publish token missing or wrong (Authorization: Bearer <PUBLISH_TOKEN>)".to_owned(),
            Denied::NotPublisher {
                publish_token_set: false,
            } => "publishing needs a token with publish patterns, or a loopback client when PUBLISH_TOKEN is unset".to_owned(),
            Denied::Forbidden(what) => format!("forbidden: the token does not cover {what}"),
        }
    }

    /// 401 (with `WWW-Authenticate: Bearer`) or 403, as JSON
    /// `{"error": message, "code": code}`.
    pub fn response(&self) -> Response<Body> {
        #[derive(Serialize)]
        struct Refusal<'a> {
            error: &'a str,
            code: &'a str,
        }
        let message = self.message();
        let mut answer = response::json(
            self.status(),
            &Refusal {
                error: &message,
                code: self.code(),
            },
        );
        let headers = answer.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        answer
    }
}

/// The token a request presents: `Authorization: Bearer <token>`, else
/// `query_token` (the `token` query parameter, already decoded).
pub fn presented<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    bearer(headers).or(query_token).filter(|t| !t.is_empty())
}

/// The `Authorization: Bearer` value, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

/// The decoded value of the `token` parameter of a query string.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "token")
        .map(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// A query string with the `token` value replaced by `***`, for logs.
pub fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("token", _)) => "token=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");

/// See [`Access::client_address`].
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let trusts = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    let mut client = peer.to_canonical();
    if !trusts(&client) {
        return client;
    }
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(",");
    for hop in hops.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
        let Some(ip) = parse_hop(hop) else {
            return IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        };
        let ip = ip.to_canonical();
        // Loopback is this host. Only a proxy on this host can have had a
        // loopback client; a proxy elsewhere that says so is lying (or
        // relaying its own local client, which is, to us, that proxy's
        // host): the client is the proxy.
        if ip.is_loopback() && !client.is_loopback() {
            break;
        }
        client = ip;
        if !trusts(&client) {
            break;
        }
    }
    client
}

/// One X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.trim_matches(['[', ']']).parse().ok()
}

/// Loopback, after mapping `::ffff:127.0.0.1` to IPv4.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guess was right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    }

    #[test]
    fn client_address_follows_only_trusted_hops() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        // The engine beside the gateway.
        assert_eq!(client_address(local, &headers(&[]), &trusted()), local);
        // A local reverse proxy forwarding an outside client.
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_address(local, &forwarded, &trusted()), outside);
        // A spoofed hop before a real one: the nearest untrusted hop wins.
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1, 203.0.113.9, 10.1.2.3")]);
        assert_eq!(client_address(local, &spoofed, &trusted()), outside);
        // An untrusted peer's header is not believed.
        let lie = headers(&[("x-forwarded-for", "127.0.0.1")]);
        assert_eq!(client_address(outside, &lie, &trusted()), outside);
        // Garbage from a trusted proxy is not loopback.
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert!(!is_loopback(client_address(local, &garbage, &trusted())));
        let with_port = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            client_address(local, &with_port, &trusted()),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn only_a_loopback_peer_makes_a_loopback_client() {
        // 10.77.0.2 is trusted (a private address), yet no header it sends
        // makes its client loopback: it is not on this host.
        let private: IpAddr = "10.77.0.2".parse().unwrap();
        for forged in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "[::1]:443",
            "127.0.0.1, 127.0.0.1",
            "127.0.0.1, 10.1.2.3",
        ] {
            let lie = headers(&[("x-forwarded-for", forged)]);
            let client = client_address(private, &lie, &trusted());
            assert!(!is_loopback(client), "{forged} made {client} loopback");
        }
        // Behind a local proxy, a private hop cannot vouch for loopback either.
        let through = headers(&[("x-forwarded-for", "127.0.0.1, 10.1.2.3")]);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_address(local, &through, &trusted()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        // A local proxy forwarding a local client: loopback, as it is.
        let local_client = headers(&[("x-forwarded-for", "127.0.0.1")]);
        assert!(is_loopback(client_address(
            local,
            &local_client,
            &trusted()
        )));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(is_loopback(client_address(
            mapped,
            &local_client,
            &trusted()
        )));
        // X-Real-IP and Forwarded are never read for the client address.
        let others = headers(&[("x-real-ip", "127.0.0.1"), ("forwarded", "for=127.0.0.1")]);
        assert_eq!(client_address(private, &others, &trusted()), private);
    }

    #[test]
    fn tokens_are_found_and_redacted() {
        let with_bearer = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(presented(&with_bearer, Some("q")), Some("abc"));
        assert_eq!(presented(&headers(&[]), Some("q")), Some("q"));
        assert_eq!(
            query_token(Some("topics=a&token=x%2Ey")),
            Some("x.y".into())
        );
        assert_eq!(
            redacted_query("topics=a&token=secret"),
            "topics=a&token=***"
        );
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
