//! `GET /_switchyard/events`: the broadcaster as Server-Sent Events, for
//! networks or clients where a WebSocket will not do.
//!
//! The same stream as `/ws`: `hello` first, then `event` frames, each as
//! `id: EPOCH:SEQ`, `event: <type>`, `data: <the WebSocket frame's JSON>`.
//! Resume from `Last-Event-ID` (what EventSource sends by itself after a
//! drop) or `?epoch=&since=`, with the same exactly-once-or-`resumed:false`
//! rule. Comment heartbeats every PING_INTERVAL_SECS; the same slow-client
//! rule (the stream ends and the socket is closed when the client falls
//! CLIENT_QUEUE behind); counted in `/health` and MAX_CONNECTIONS; ended at
//! shutdown. A reader that accepts no bytes for WRITE_TIMEOUT_SECS is closed
//! by the connection's watchdog (`watchdog`), since hyper stops polling a
//! body whose socket is full.
//!
//! With AUTH_SECRET the request needs a token (`Authorization: Bearer`
//! or `?token=`, which EventSource can send): 401/403 JSON before anything
//! streams; no `topics` with a scoped token reads the token's own
//! patterns. At the token's `exp` + LEEWAY the stream sends
//! `event: error` with the `token_expired` JSON and ends (EventSource then
//! reconnects, and the page supplies a fresh token).
//!
//! Does not own: what to send when ([`ClientStream`]), what a token allows
//! (`auth`, `broadcast::admit`).

use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::time::Sleep;
use tracing::debug;

use crate::auth::{token::LEEWAY, Access};
use crate::broadcast::{self, Broadcaster, ClientSlot, ClientStream, Step, Transport};
use crate::hub::{Catchup, Delivery, Epoch, Event, HubError, Snapshot};
use crate::protocol::{self, parse_event_id, SubscriptionQuery};
use crate::response::{self, Body, BoxError};
use crate::watchdog::ConnectionHandle;

pub async fn handle(
    broadcaster: &Arc<Broadcaster>,
    access: &Access,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::GET {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let mut query = match SubscriptionQuery::parse_limited(
        request.uri().query(),
        broadcaster.limits.max_patterns,
    ) {
        Ok(query) => query,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    // EventSource resends the last id it saw; it wins over the query string,
    // which still holds the point the page first asked for.
    if let Some(id) = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
    {
        match parse_event_id(id) {
            Some(point) => query.resume = Some(point),
            None => {
                return response::json_error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: expected EPOCH:SEQ",
                )
            }
        }
    }
    let reader = match broadcast::admit(access, request.headers(), &mut query) {
        Ok(reader) => reader,
        Err(refusal) => return refusal.response(),
    };
    let Some(slot) = broadcaster.reserve_client(Transport::Sse) else {
        return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let stream = match broadcaster.subscribe(query.patterns, query.resume).await {
        Ok(stream) => stream,
        Err(error) => return response::hub_error(&error),
    };
    // A new stream holds its hello until it is handed out.
    let Some(epoch) = stream.hello().map(|hello| hello.epoch.clone()) else {
        return response::hub_error(&HubError::Unavailable);
    };
    let grant = reader.grant();
    debug!(
        resumed = matches!(stream.hello().map(|hello| &hello.catchup), Some(Catchup::Resumed(_))),
        subject = ?grant.and_then(|g| g.subject.as_deref()),
        "sse client connected"
    );
    let expiry = grant.map(|grant| {
        Box::pin(tokio::time::sleep_until(broadcast::instant_at(
            grant.expires_at + LEEWAY,
        )))
    });
    // A cut-off client's socket is closed at once, even when it is full
    // and hyper no longer polls this body (see `watchdog`).
    if let Some(connection) = request.extensions().get::<ConnectionHandle>() {
        connection.close_when_cut_off(stream.queue().clone());
    }

    let state = Sse {
        stream,
        epoch,
        expiry,
        _slot: slot,
    };
    // `None` once the token expired: the body ends.
    let frames = stream::unfold(Some(state), |state| async move {
        match state {
            Some(sse) => sse.next_chunk().await,
            None => None,
        }
    });

    let mut answer = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let out = answer.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Ask nginx-like proxies in front not to buffer the stream.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    answer
}

/// One SSE client, polled by hyper as the response body.
struct Sse {
    stream: ClientStream,
    /// The epoch of the ids we write (a reset changes it).
    epoch: Epoch,
    /// When its token's grant runs out (exp + LEEWAY); `None` without
    /// AUTH_SECRET.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Counts this client until the body is dropped.
    _slot: ClientSlot,
}

type Chunk = Result<Frame<Bytes>, BoxError>;

impl Sse {
    async fn next_chunk(mut self) -> Option<(Chunk, Option<Sse>)> {
        let step = match &mut self.expiry {
            None => self.stream.next().await,
            Some(expiry) => tokio::select! {
                biased;
                _ = expiry.as_mut() => {
                    // The last chunk: the client (and its place) goes now.
                    debug!("sse client's token expired");
                    return Some((Ok(Frame::data(expired_chunk())), None));
                }
                step = self.stream.next() => step,
            },
        };
        let chunk = match step {
            Step::Hello(snapshot) => opening_chunk(snapshot),
            Step::Deliveries(batch) => {
                let mut out = BytesMut::new();
                for delivery in &batch {
                    match delivery {
                        Delivery::Event(event) => write_event(&mut out, &self.epoch, event),
                        Delivery::Reset(reset) => {
                            self.epoch = reset.epoch.clone();
                            write_frame(
                                &mut out,
                                &reset.epoch,
                                reset.seq,
                                "reset",
                                reset.frame.as_bytes(),
                            );
                        }
                    }
                }
                out.freeze()
            }
            Step::Keepalive => Bytes::from_static(b": ping\n\n"),
            // Cut off or shutdown: the body ends (and on a cut-off the
            // watchdog closes the socket).
            Step::End(_) => return None,
        };
        Some((Ok(Frame::data(chunk)), Some(self)))
    }
}

fn opening_chunk(snapshot: &Snapshot) -> Bytes {
    let mut out = BytesMut::new();
    write_frame(
        &mut out,
        &snapshot.epoch,
        snapshot.seq,
        "hello",
        protocol::hello_frame(snapshot).as_bytes(),
    );
    if let Catchup::Resumed(events) = &snapshot.catchup {
        for event in events {
            write_event(&mut out, &snapshot.epoch, event);
        }
    }
    out.freeze()
}

/// `event: error` with the `token_expired` JSON, and no id (the resume
/// point stays the last event's).
fn expired_chunk() -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"event: error\ndata: ");
    out.put_slice(
        protocol::error_frame(
            protocol::code::TOKEN_EXPIRED,
            "token expired: reconnect with a fresh token",
        )
        .as_bytes(),
    );
    out.put_slice(b"\n\n");
    out.freeze()
}

fn write_event(out: &mut BytesMut, epoch: &Epoch, event: &Event) {
    write_frame(out, epoch, event.seq, "event", event.frame.as_bytes());
}

/// One SSE message. A publisher's JSON may hold line breaks between tokens
/// (never inside strings, where JSON escapes them): each line gets its own
/// `data:` field, and the client joins them back with `\n`.
fn write_frame(out: &mut BytesMut, epoch: &Epoch, seq: u64, kind: &str, json: &[u8]) {
    out.put_slice(b"id: ");
    out.put_slice(epoch.as_str().as_bytes());
    out.put_u8(b':');
    out.put_slice(seq.to_string().as_bytes());
    out.put_slice(b"\nevent: ");
    out.put_slice(kind.as_bytes());
    out.put_u8(b'\n');
    for line in json.split(|b| *b == b'\n' || *b == b'\r') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_json_becomes_several_data_fields() {
        let mut out = BytesMut::new();
        write_frame(
            &mut out,
            &Epoch::from_string("e1"),
            7,
            "event",
            b"{\"a\":\n1}",
        );
        assert_eq!(
            &out[..],
            b"id: e1:7\nevent: event\ndata: {\"a\":\ndata: 1}\n\n"
        );
    }
}
