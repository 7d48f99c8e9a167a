//! BASIC_AUTH: one password in front of every route but `/health`.
//!
//! Owns: reading `Authorization: Basic` ([`credentials`]), checking it
//! against the configured bcrypt hashes (on the blocking pool, at most
//! [`BCRYPT_CONCURRENCY`] at a time, with a bounded wait), a short-lived
//! cache of successful checks (a browser sends the same credentials with
//! every request and every WebSocket handshake; each would otherwise cost a
//! bcrypt), the per-client limit on failed attempts (per IPv4 address or
//! IPv6 /64, [`ClientKey`]; 429 with Retry-After),
//! and the 401 challenge a browser answers with its login prompt.
//!
//! Does not own: which requests skip it (the router asks
//! [`crate::auth::Access::pass_site`], which lets bearer tokens and loopback
//! publishes through first) or what the client address is
//! ([`crate::auth::Access::client_address`]).
//!
//! Never logs a user name, a password or a hash: a user name field is where
//! a password lands when someone types into the wrong box.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth::constant_time_eq;
use crate::config::BasicUser;
use crate::response::{self, Body};

/// Failed attempts one client address may make per [`FAILURE_WINDOW`];
/// past them every request from it answers 429 until the window ends.
pub const MAX_FAILURES: u32 = 10;

/// The window [`MAX_FAILURES`] counts in, from an address's first failure.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Requests without credentials verified from the address that an address
/// over [`MAX_FAILURES`] may still make in its window; past them even a
/// password verified from there waits for the window's end. A guess at a
/// locked address is answered from the cache alone (no bcrypt), so without
/// this bound the cache would be an unthrottled oracle for someone sharing
/// the signed-in user's address.
pub const MAX_REFUSED_WHILE_LOCKED: u32 = 10 * MAX_FAILURES;

/// Client addresses whose failures are tracked; past it the oldest window
/// is forgotten.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// How long a successful check is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Successful checks remembered at once; past it the oldest is forgotten.
pub const MAX_VERIFIED: usize = 1024;

/// bcrypt checks running at once (each takes a blocking thread and, at
/// cost 10, ~50-100 ms of CPU).
pub const BCRYPT_CONCURRENCY: usize = 2;

/// Requests that may wait for a bcrypt slot; past it: 503 with Retry-After.
pub const BCRYPT_QUEUE: usize = 64;

/// Longest `Authorization: Basic` payload looked at (base64 text).
const MAX_CREDENTIALS_BYTES: usize = 4096;

const CHALLENGE: HeaderValue =
    HeaderValue::from_static(r#"Basic realm="switchyard", charset="UTF-8""#);

/// The site password of one gateway.
pub struct SitePassword {
    users: Vec<BasicUser>,
    /// Digests of recently verified (user, password) pairs, when, and from
    /// where.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// Failed attempts per client (IPv4 address or IPv6 /64).
    failures: Mutex<HashMap<ClientKey, FailureWindow>>,
    /// Slots for bcrypt checks running on the blocking pool.
    bcrypt_running: Arc<Semaphore>,
    /// Slots for requests waiting for a bcrypt slot.
    bcrypt_waiting: Semaphore,
}

/// One client's failed attempts.
#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    /// The first failure of the window; it ends [`FAILURE_WINDOW`] later.
    started: Instant,
    /// Failed (or still running) attempts in it.
    failures: u32,
    /// Requests refused with 429 in it (see [`MAX_REFUSED_WHILE_LOCKED`]).
    refused: u32,
}

/// A (user, password) pair that bcrypt accepted.
#[derive(Debug, Clone, Copy)]
struct Verified {
    at: Instant,
    /// The client it was last accepted from: at that address it passes
    /// even while others' failures lock the address.
    from: ClientKey,
}

/// Whom failures are counted against: an IPv4 address, or an IPv6 /64
/// (one host, or one customer of a provider, commonly holds a whole /64,
/// so counting per IPv6 address would give unlimited tries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(client: IpAddr) -> ClientKey {
        match client.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !(u128::MAX >> 64);
                ClientKey(IpAddr::V6(prefix.into()))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(prefix) => write!(f, "{prefix}/64"),
            IpAddr::V4(address) => write!(f, "{address}"),
        }
    }
}

/// A user name and password from `Authorization: Basic`, as bytes (RFC
/// 7617 allows any charset; bcrypt checks bytes). Its `Debug` hides the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"***")
            .finish()
    }
}

/// The credentials in an `Authorization` header value: `Basic
/// base64(user:password)` (scheme case-insensitive, padding optional). `None`
/// for another scheme, bad base64, a missing `:` or an oversized value.
pub fn credentials(value: &[u8]) -> Option<Credentials> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, payload) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let payload = payload.trim();
    if payload.len() > MAX_CREDENTIALS_BYTES {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(payload)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(Credentials {
        user: decoded[..colon].to_vec(),
        password: decoded[colon + 1..].to_vec(),
    })
}

/// True when the header uses the Basic scheme (well formed or not).
fn is_basic(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"basic ")
}

enum Checked {
    Right,
    Wrong,
    /// No bcrypt slot in time (or the check could not run).
    Busy,
}

impl SitePassword {
    /// `None` when BASIC_AUTH is unset.
    pub fn new(users: &[BasicUser]) -> Option<SitePassword> {
        (!users.is_empty()).then(|| SitePassword {
            users: users.to_vec(),
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            bcrypt_running: Arc::new(Semaphore::new(BCRYPT_CONCURRENCY)),
            bcrypt_waiting: Semaphore::new(BCRYPT_QUEUE),
        })
    }

    /// The signed-in user's name when the request carries a valid user and
    /// password; else the answer to send: 401 with the Basic challenge, 429
    /// with Retry-After while `client` (its IPv6 /64) is over
    /// [`MAX_FAILURES`], or 503 when too many checks are already waiting.
    /// While the address is locked, a (user, password) pair verified from
    /// it before still passes (others' failures there do not lock the user
    /// out), up to [`MAX_REFUSED_WHILE_LOCKED`].
    pub async fn check(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<String, Response<Body>> {
        let wants_json = response::wants_json(headers);
        let client = ClientKey::of(client);
        let locked = self.locked_out(client, Instant::now());
        let basic = headers.get(header::AUTHORIZATION).filter(|v| is_basic(v));
        let parsed = basic.map(|value| credentials(value.as_bytes()));
        if let Some(Some(credentials)) = &parsed {
            let digest = digest(credentials);
            if self.recently_verified(&digest, client, locked.is_some(), Instant::now()) {
                return Ok(String::from_utf8_lossy(&credentials.user).into_owned());
            }
        }
        if let Some(wait) = locked {
            self.count_refused(client);
            return Err(too_many_attempts(wait, wants_json));
        }
        let Some(parsed) = parsed else {
            return Err(challenge(wants_json));
        };
        let Some(credentials) = parsed else {
            return Err(match self.reserve_attempt(client, Instant::now()) {
                Ok(()) => challenge(wants_json),
                Err(wait) => too_many_attempts(wait, wants_json),
            });
        };
        let digest = digest(&credentials);
        // Counted before the check, so that many attempts sent at once are
        // held to the limit too; given back when it succeeds.
        if let Err(wait) = self.reserve_attempt(client, Instant::now()) {
            return Err(too_many_attempts(wait, wants_json));
        }
        let user = String::from_utf8_lossy(&credentials.user).into_owned();
        match self.verify(credentials).await {
            Checked::Right => {
                self.give_back_attempt(client);
                self.remember(digest, client, Instant::now());
                Ok(user)
            }
            Checked::Wrong => {
                debug!(%client, "site password refused");
                Err(challenge(wants_json))
            }
            Checked::Busy => {
                self.give_back_attempt(client);
                Err(busy(wants_json))
            }
        }
    }

    /// Checks `credentials` with bcrypt off the async threads. An unknown
    /// user is checked against a configured hash all the same, so the
    /// answer takes as long as for a known one.
    async fn verify(&self, credentials: Credentials) -> Checked {
        let Ok(_waiting) = self.bcrypt_waiting.try_acquire() else {
            return Checked::Busy;
        };
        let Ok(running) = self.bcrypt_running.clone().acquire_owned().await else {
            return Checked::Busy;
        };
        let mut matched: Option<&BasicUser> = None;
        for user in &self.users {
            if constant_time_eq(user.user.as_bytes(), &credentials.user) {
                matched = Some(user);
            }
        }
        let Some(hash_of) = matched.or(self.users.first()) else {
            return Checked::Wrong;
        };
        let known = matched.is_some();
        let hash = hash_of.hash.expose().to_owned();
        let password = credentials.password;
        let checked = tokio::task::spawn_blocking(move || {
            let _running = running;
            bcrypt::verify(&password, &hash)
        })
        .await;
        match checked {
            Ok(Ok(true)) if known => Checked::Right,
            Ok(_) => Checked::Wrong,
            Err(_) => Checked::Busy,
        }
    }

    /// How long `client` must still wait, when it is over the limit.
    fn locked_out(&self, client: ClientKey, now: Instant) -> Option<Duration> {
        let failures = lock(&self.failures);
        let window = failures.get(&client)?;
        let ends = window.started + FAILURE_WINDOW;
        (window.failures >= MAX_FAILURES && now < ends).then(|| ends - now)
    }

    /// Counts one attempt against `client`; refused (with the wait) when it
    /// is already at the limit.
    fn reserve_attempt(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        let reached = {
            let mut failures = lock(&self.failures);
            if !failures.contains_key(&client) && failures.len() >= MAX_TRACKED_CLIENTS {
                forget_oldest_windows(&mut failures, now);
            }
            let fresh = FailureWindow {
                started: now,
                failures: 0,
                refused: 0,
            };
            let window = failures.entry(client).or_insert(fresh);
            if now >= window.started + FAILURE_WINDOW {
                *window = fresh;
            }
            if window.failures >= MAX_FAILURES {
                return Err(window.started + FAILURE_WINDOW - now);
            }
            window.failures += 1;
            window.failures == MAX_FAILURES
        };
        if reached {
            warn!(
                %client,
                max = MAX_FAILURES,
                window_secs = FAILURE_WINDOW.as_secs(),
                "too many failed site-password attempts; this address gets 429 until its window ends"
            );
        }
        Ok(())
    }

    fn give_back_attempt(&self, client: ClientKey) {
        if let Some(window) = lock(&self.failures).get_mut(&client) {
            window.failures = window.failures.saturating_sub(1);
        }
    }

    /// One more 429 for a locked `client`.
    fn count_refused(&self, client: ClientKey) {
        if let Some(window) = lock(&self.failures).get_mut(&client) {
            window.refused = window.refused.saturating_add(1);
        }
    }

    /// True when `digest` was verified recently and may pass: anywhere
    /// while `client` is not locked (it then becomes the pair's address),
    /// and, while it is, only where it was verified, and only until the
    /// address has been refused [`MAX_REFUSED_WHILE_LOCKED`] times.
    fn recently_verified(
        &self,
        digest: &[u8; 32],
        client: ClientKey,
        locked: bool,
        now: Instant,
    ) -> bool {
        if locked {
            let flooded = lock(&self.failures)
                .get(&client)
                .is_some_and(|window| window.refused >= MAX_REFUSED_WHILE_LOCKED);
            if flooded {
                return false;
            }
        }
        let mut verified = lock(&self.verified);
        let Some(entry) = verified.get_mut(digest) else {
            return false;
        };
        if now.duration_since(entry.at) >= VERIFIED_FOR || (locked && entry.from != client) {
            return false;
        }
        entry.from = client;
        true
    }

    fn remember(&self, digest: [u8; 32], from: ClientKey, now: Instant) {
        let mut verified = lock(&self.verified);
        if !verified.contains_key(&digest) && verified.len() >= MAX_VERIFIED {
            verified.retain(|_, entry| now.duration_since(entry.at) < VERIFIED_FOR);
            if verified.len() >= MAX_VERIFIED {
                let oldest = verified
                    .iter()
                    .min_by_key(|(_, entry)| entry.at)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    verified.remove(&oldest);
                }
            }
        }
        verified.insert(digest, Verified { at: now, from });
    }
}

/// Makes room in a full failure map: drops ended windows, else the oldest.
fn forget_oldest_windows(failures: &mut HashMap<ClientKey, FailureWindow>, now: Instant) {
    failures.retain(|_, window| now < window.started + FAILURE_WINDOW);
    if failures.len() >= MAX_TRACKED_CLIENTS {
        let oldest = failures
            .iter()
            .min_by_key(|(_, window)| window.started)
            .map(|(client, _)| *client);
        if let Some(oldest) = oldest {
            failures.remove(&oldest);
        }
    }
}

/// The cache key of a (user, password) pair: SHA-256 over the user's
/// length, the user and the password, so that no two pairs share an input.
/// (Unsalted: it lives only in this process's memory, where the password
/// itself passes through on every request anyway.)
fn digest(credentials: &Credentials) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"switchyard basic auth\0");
    hasher.update((credentials.user.len() as u64).to_be_bytes());
    hasher.update(&credentials.user);
    hasher.update(&credentials.password);
    hasher.finalize().into()
}

/// A poisoned lock only means another request panicked mid-update; the
/// maps stay usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 401 with the Basic challenge: a browser shows its login prompt.
fn challenge(wants_json: bool) -> Response<Body> {
    let mut answer = response::error_page(
        StatusCode::UNAUTHORIZED,
        "This site needs a user name and password.",
        wants_json,
    );
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, CHALLENGE);
    answer
}

fn too_many_attempts(wait: Duration, wants_json: bool) -> Response<Body> {
    // Whole seconds, rounded up, at least 1.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut answer = response::error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many failed sign-ins from this address: try again in {seconds} s."),
        wants_json,
    );
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    answer
}

fn busy(wants_json: bool) -> Response<Body> {
    let mut answer = response::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many sign-ins at once: try again in a moment.",
        wants_json,
    );
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn encoded(text: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }

    #[test]
    fn credentials_are_parsed() {
        let parsed = credentials(encoded("alice:pa:ss word").as_bytes()).unwrap();
        assert_eq!(parsed.user, b"alice");
        assert_eq!(parsed.password, b"pa:ss word");
        assert!(!format!("{parsed:?}").contains("pa:ss"));
        // Scheme case, extra spaces, missing padding.
        let unpadded = encoded("a:b")
            .trim_end_matches('=')
            .replace("Basic", "bAsIc  ");
        assert_eq!(credentials(unpadded.as_bytes()).unwrap().password, b"b");
        assert!(credentials(encoded("no colon").as_bytes()).is_none());
        assert!(credentials(b"Bearer abc").is_none());
        assert!(credentials(b"Basic !!!").is_none());
        assert!(credentials(b"Basic").is_none());
        assert!(credentials(&[0xff, 0xfe]).is_none());
        let empty = credentials(encoded(":").as_bytes()).unwrap();
        assert!(empty.user.is_empty() && empty.password.is_empty());
    }

    fn site(password: &str) -> SitePassword {
        let hash = bcrypt::hash(password, 4).unwrap();
        let config = Config::from_vars([("BASIC_AUTH", format!("alice:{hash}").as_str())]).unwrap();
        SitePassword::new(&config.basic_auth).unwrap()
    }

    fn with_basic(text: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, encoded(text).parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn right_wrong_and_rate_limited() {
        let site = site("s3cret");
        let me: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(site.check(me, &with_basic("alice:s3cret")).await.is_ok());
        let refused = site.check(me, &HeaderMap::new()).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
        // An unknown user fails like a wrong password.
        let unknown = site.check(me, &with_basic("bob:s3cret")).await.unwrap_err();
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        for _ in 1..MAX_FAILURES {
            let wrong = site
                .check(me, &with_basic("alice:guess"))
                .await
                .unwrap_err();
            assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        }
        // A password not verified from here (right or not) waits; the one
        // verified from here before passes (see the /64 test).
        let limited = site
            .check(me, &with_basic("alice:other"))
            .await
            .unwrap_err();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = limited.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(site.check(other, &with_basic("alice:s3cret")).await.is_ok());
        // The window ends.
        let later = Instant::now() + FAILURE_WINDOW;
        assert!(site.locked_out(ClientKey::of(me), later).is_none());
        assert!(site.reserve_attempt(ClientKey::of(me), later).is_ok());
    }

    #[tokio::test]
    async fn ipv6_counts_per_64_and_a_cached_password_is_not_locked_out() {
        let site = site("s3cret");
        let rotating = |i: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, i, i, i, i]);
        let me = rotating(0);
        // Verified once from here: cached.
        assert!(site.check(me, &with_basic("alice:s3cret")).await.is_ok());
        for i in 1..=MAX_FAILURES as u16 {
            let wrong = site.check(rotating(i), &with_basic("alice:guess")).await;
            assert_eq!(wrong.unwrap_err().status(), StatusCode::UNAUTHORIZED);
        }
        // The whole /64 is over the limit for anything not verified here...
        let limited = site
            .check(rotating(999), &with_basic("alice:guess"))
            .await
            .unwrap_err();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        // ...but the user verified from it goes on.
        assert!(site.check(me, &with_basic("alice:s3cret")).await.is_ok());
        assert!(site
            .check(rotating(7), &with_basic("alice:s3cret"))
            .await
            .is_ok());
        // A flood of refusals at the address ends that too, so the cache is
        // no unthrottled oracle for someone sharing the address.
        for _ in 0..MAX_REFUSED_WHILE_LOCKED {
            let _ = site.check(rotating(3), &with_basic("alice:guess")).await;
        }
        let flooded = site.check(me, &with_basic("alice:s3cret")).await;
        assert_eq!(flooded.unwrap_err().status(), StatusCode::TOO_MANY_REQUESTS);
        // The next /64 and IPv4-mapped addresses are counted apart.
        let next: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(site
            .locked_out(ClientKey::of(next), Instant::now())
            .is_none());
        let v4: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(
            ClientKey::of(v4),
            ClientKey::of("198.51.100.1".parse().unwrap())
        );
        assert_ne!(
            ClientKey::of("198.51.100.1".parse().unwrap()),
            ClientKey::of("198.51.100.2".parse().unwrap())
        );
    }

    #[test]
    fn the_maps_stay_bounded() {
        let site = site("x");
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            let client = ClientKey::of(IpAddr::from(i.to_be_bytes()));
            site.reserve_attempt(client, now).unwrap();
        }
        assert_eq!(lock(&site.failures).len(), MAX_TRACKED_CLIENTS);
        for i in 0..(MAX_VERIFIED as u64 + 10) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&i.to_be_bytes());
            site.remember(digest, ClientKey::of([127, 0, 0, 1].into()), now);
        }
        assert_eq!(lock(&site.verified).len(), MAX_VERIFIED);
    }
}
