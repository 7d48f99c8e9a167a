//! `GET /_switchyard/state`: the polling transport.
//!
//! `?topics=` filters; `?epoch=E&since=S` asks for the events after S:
//! `{"epoch","seq","resumed":true,"events":[event frames]}` when the hub can
//! serve that point, else `{"epoch","seq","resumed":false,"state":{...}}`,
//! the full retained state the client must replace its own with.
//!
//! `?history=N` (1 to MAX_HISTORY) answers instead the last N events in
//! history that match the topics, oldest first, read-only:
//! `{"epoch","seq","history":[event frames]}`; a page starts its trade tape
//! with them (client.js's `history` option). It takes no resume point.
//!
//! `&wait=N` (at most 30 s) long-polls: when the resume point is current and
//! nothing new matches yet, the answer waits for the first event (or N s).
//! A waiting long-poll counts against MAX_CONNECTIONS (503 past it) and in
//! `/health`'s `connections` until it answers; a client that then accepts
//! no bytes of the answer for WRITE_TIMEOUT_SECS is closed by the
//! connection's watchdog.
//!
//! With AUTH_SECRET the request needs a token (`Authorization: Bearer` or
//! `?token=`): 401/403 JSON otherwise; no `topics` with a scoped token
//! reads the token's own patterns, and a long-poll never waits past the
//! token's `exp` + LEEWAY.
//!
//! Does not own: the subscription stream ([`crate::broadcast::ClientStream`]),
//! what a token allows (`auth`, `broadcast::admit`).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Access;
use crate::broadcast::{self, Broadcaster, Step, Transport};
use crate::event_loops;
use crate::hub::{Catchup, Delivery, Epoch, Event, HubError, Recent, Seq, Snapshot};
use crate::protocol::{StateMap, SubscriptionQuery};
use crate::response::{self, Body};

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Most events `?history=N` answers (HISTORY_SIZE's default: a page wants
/// a tape, not the whole history).
pub const MAX_HISTORY: usize = 1000;

pub async fn handle(
    broadcaster: &Arc<Broadcaster>,
    access: &Access,
    request: Request<Incoming>,
) -> Response<Body> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let mut query = match SubscriptionQuery::parse_limited(
        request.uri().query(),
        broadcaster.limits.max_patterns,
    ) {
        Ok(query) => query,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    let wait = match parse_wait(request.uri().query()) {
        Ok(wait) => wait,
        Err(message) => return response::json_error(StatusCode::BAD_REQUEST, message),
    };
    let history =
        match parse_history(request.uri().query()) {
            Ok(Some(_)) if query.resume.is_some() || wait.is_some() => return response::json_error(
                StatusCode::BAD_REQUEST,
                "history: takes no since, epoch or wait (it is a read of the past, not a resume)",
            ),
            Ok(history) => history,
            Err(message) => return response::json_error(StatusCode::BAD_REQUEST, message),
        };
    let reader = match broadcast::admit(access, request.headers(), &mut query) {
        Ok(reader) => reader,
        Err(refusal) => return refusal.response(),
    };
    if let Some(limit) = history {
        return match broadcaster.hub.recent(query.patterns, limit).await {
            Ok(recent) => json_answer(history_body(&recent)),
            Err(error) => response::hub_error(&error),
        };
    }
    // Never wait past the grant (exp + LEEWAY).
    let wait = match (wait, reader.grant()) {
        (Some(wait), Some(grant)) => Some(wait.min(grant.remaining())),
        (wait, _) => wait,
    };
    let snapshot = match wait {
        Some(wait) if query.resume.is_some() => {
            let Some(_slot) = broadcaster.reserve_client(Transport::LongPoll) else {
                return response::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections",
                );
            };
            long_poll(broadcaster, query, wait).await
        }
        // Reading and encoding a large retained state takes tens of
        // milliseconds (sorting 64k topics, 64 MB of JSON): off the HTTP
        // loop, which meanwhile serves its other connections.
        _ => {
            let hub = broadcaster.hub.clone();
            let work = move || {
                let snapshot = tokio::runtime::Handle::current()
                    .block_on(hub.snapshot(query.patterns, query.resume))?;
                let body = encode(&snapshot);
                Ok::<_, HubError>(body)
            };
            let body = match event_loops::off_loop(work).await {
                Some(Ok(body)) => body,
                Some(Err(error)) => return response::hub_error(&error),
                None => {
                    return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
            };
            return json_answer(body);
        }
    };
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(error) => return response::hub_error(&error),
    };
    // The events since a current resume point are few; a fresh state may
    // be all of it, encoded off the loop as above.
    if let Catchup::Resumed(_) = snapshot.catchup {
        return json_answer(encode(&snapshot));
    }
    match event_loops::off_loop(move || encode(&snapshot)).await {
        Some(body) => json_answer(body),
        None => response::json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// 200 with `body` as JSON, never cached.
fn json_answer(body: Bytes) -> Response<Body> {
    let mut answer = response::with_type(
        StatusCode::OK,
        HeaderValue::from_static("application/json"),
        response::full(body),
    );
    answer.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    answer
}

/// The JSON answer for `snapshot`.
fn encode(snapshot: &Snapshot) -> Bytes {
    match &snapshot.catchup {
        Catchup::Fresh(state) => {
            #[derive(Serialize)]
            struct Fresh<'a> {
                epoch: &'a Epoch,
                seq: Seq,
                resumed: bool,
                state: StateMap<'a>,
            }
            serde_json::to_vec(&Fresh {
                epoch: &snapshot.epoch,
                seq: snapshot.seq,
                resumed: false,
                state: StateMap(state),
            })
            .map(Bytes::from)
            .unwrap_or_default()
        }
        Catchup::Resumed(events) => {
            let head =
                serde_json::json!({"epoch": snapshot.epoch, "seq": snapshot.seq, "resumed": true});
            with_frames(head, "events", events)
        }
    }
}

/// `{"epoch","seq","history":[…]}` for `?history=N`.
fn history_body(recent: &Recent) -> Bytes {
    let head = serde_json::json!({"epoch": recent.epoch, "seq": recent.seq});
    with_frames(head, "history", &recent.events)
}

/// `head` (a JSON object) with `field` added: the events' frames, which
/// are already JSON, spliced in as they are.
fn with_frames(head: serde_json::Value, field: &str, events: &[Arc<Event>]) -> Bytes {
    let head = head.to_string();
    let mut out = BytesMut::with_capacity(
        head.len() + field.len() + 8 + events.iter().map(|e| e.frame.len() + 1).sum::<usize>(),
    );
    out.put_slice(&head.as_bytes()[..head.len() - 1]);
    out.put_slice(b",\"");
    out.put_slice(field.as_bytes());
    out.put_slice(b"\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event.frame.as_bytes());
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// The raw value of `name=` in the query, if present.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `history=N`: 1 to MAX_HISTORY events.
fn parse_history(query: Option<&str>) -> Result<Option<usize>, &'static str> {
    let Some(value) = query_value(query, "history") else {
        return Ok(None);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_HISTORY).contains(&n) => Ok(Some(n)),
        _ => Err("history: must be a whole number of events from 1 to 1000"),
    }
}

/// `wait=N`: whole seconds, 0 to 30.
fn parse_wait(query: Option<&str>) -> Result<Option<Duration>, &'static str> {
    let Some(value) = query_value(query, "wait") else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(secs) => Ok(Some(Duration::from_secs(secs).min(MAX_WAIT))),
        Err(_) => Err("wait: must be a whole number of seconds (at most 30)"),
    }
}

/// Subscribes from the resume point; when that yields nothing yet, waits for
/// the first matching deliveries (or `wait`, or shutdown).
async fn long_poll(
    broadcaster: &Arc<Broadcaster>,
    query: SubscriptionQuery,
    wait: Duration,
) -> Result<Snapshot, HubError> {
    let query_patterns = query.patterns.clone();
    let mut stream = broadcaster.subscribe(query.patterns, query.resume).await?;
    let (epoch, mut seq) = match stream.next().await {
        Step::Hello(snapshot) => match &snapshot.catchup {
            Catchup::Resumed(events) if events.is_empty() => (snapshot.epoch.clone(), snapshot.seq),
            catchup => {
                return Ok(Snapshot {
                    epoch: snapshot.epoch.clone(),
                    seq: snapshot.seq,
                    catchup: match catchup {
                        Catchup::Resumed(events) => Catchup::Resumed(events.clone()),
                        Catchup::Fresh(state) => Catchup::Fresh(state.clone()),
                    },
                })
            }
        },
        // `next` yields the hello first.
        _ => return Err(HubError::Unavailable),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = Vec::new();
    loop {
        let step = tokio::select! {
            step = stream.next() => step,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match step {
            Step::Deliveries(batch) => {
                for delivery in batch {
                    match delivery {
                        Delivery::Event(event) => events.push(event.clone()),
                        // The hub's stream broke while we waited: answer
                        // with the fresh state, as a reset would.
                        Delivery::Reset(_) => {
                            drop(stream);
                            return broadcaster.hub.snapshot(query_patterns, None).await;
                        }
                    }
                }
                break;
            }
            Step::Keepalive | Step::Hello(_) => continue,
            Step::End(_) => break,
        }
    }
    if let Some(last) = events.last() {
        seq = last.seq;
    }
    Ok(Snapshot {
        epoch,
        seq,
        catchup: Catchup::Resumed(events),
    })
}
