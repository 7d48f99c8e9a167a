//! `POST /_switchyard/publish`: one event or an array, all-or-nothing.
//!
//! Owns: applying the publish policy to an HTTP request — a browser's
//! cross-origin publish refused (403 `origin_not_allowed`: no cross-site
//! publishing into a local gateway), the publisher asked of
//! [`Access::publisher`] before the body is read (401), every event's topic
//! checked against it after parsing (403 naming the first uncovered topic;
//! the whole batch refused) — the body size limit, and the
//! 202/400/401/403/413/503/507 answers (507: the batch would take retained
//! state past MAX_RETAINED_BYTES). An answer given before the body is read
//! (405, 403 origin, 401, 413) lingers on the rest of the body (`linger`),
//! so the client reads it instead of a reset.
//!
//! An event may carry an idempotency `"id"` (or, for a single-event body, an
//! `Idempotency-Key` header): a request whose every event repeats an id
//! within the hub's dedup window answers 200 with the original
//! `{"epoch","seq"}` (`"seqs"`) and publishes nothing; one mixing repeats and
//! new events answers 409 and publishes nothing (see [`idempotency_key`]).
//!
//! Does not own: who is a publisher (PUBLISH_TOKEN, token `publish`
//! patterns, the loopback exemption on the effective client address: all
//! in [`crate::auth`]) or the Origin rules ([`crate::cors`]).

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::auth::{self, Access, Denied, Publisher};
use crate::config::Config;
use crate::hub::{Epoch, Hub, Seq};
use crate::protocol;
use crate::response::{self, Body};
use crate::shutdown::Shutdown;
use crate::{cors, linger};

pub async fn handle(
    config: &Config,
    access: &Access,
    hub: &dyn Hub,
    shutdown: &Shutdown,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    // Every answer given before the body is read lingers on it (see `linger`).
    let linger_bytes = linger::max_bytes(config.max_message_bytes);
    let early = |request: Request<Incoming>, answer: Response<Body>| {
        if !linger::expects_continue(request.headers()) {
            linger::discard(request.into_body(), linger_bytes, shutdown);
        }
        answer
    };
    if request.method() != Method::POST {
        let answer = response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST to publish");
        return early(request, answer);
    }
    if !cors::origin_allowed(config, request.headers()) {
        debug!(%peer, origin = ?request.headers().get(header::ORIGIN), "cross-origin publish refused");
        return early(request, origin_not_allowed());
    }
    let publisher = {
        let headers = request.headers();
        let query_token = auth::query_token(request.uri().query());
        let client = access.client_address(peer, headers);
        access.publisher(client, auth::presented(headers, query_token.as_deref()))
    };
    if let Publisher::Refused(denied) = &publisher {
        return early(request, denied.response());
    }
    let limit = config.max_message_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return early(request, too_large(limit));
    }
    let lingers = !linger::expects_continue(request.headers());
    let headers_key = match request.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        Some(Err(_)) => {
            let answer = response::json_error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key: must be visible ASCII",
            );
            return early(request, answer);
        }
    };
    let body = match read_limited(request.into_body(), limit, declared).await {
        Ok(body) => body,
        Err(ReadError::TooLarge(rest)) => {
            if lingers {
                linger::discard(rest, linger_bytes, shutdown);
            }
            return too_large(limit);
        }
        Err(ReadError::Broken) => {
            return response::json_error(StatusCode::BAD_REQUEST, "body: could not be read")
        }
    };
    let (mut batch, is_array) = match protocol::parse_publish_body(&body) {
        Ok(parsed) => parsed,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    if let Err(error) = idempotency_key(headers_key.as_deref(), is_array, &mut batch) {
        return response::json_error(StatusCode::BAD_REQUEST, &error.0);
    }
    if let Some(event) = batch.iter().find(|e| !publisher.may_publish(&e.topic)) {
        let topic = event.topic.as_str();
        debug!(%peer, topic, "publish outside the token's publish patterns refused");
        return Denied::Forbidden(format!("publishing to topic {topic}")).response();
    }
    match hub.publish(batch).await {
        Ok(receipt) => {
            debug!(%peer, count = receipt.seqs.len(), repeated = receipt.repeated, "published");
            let status = if receipt.repeated {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            accepted(status, &receipt.epoch, receipt.seqs, is_array)
        }
        Err(error) => response::hub_error(&error),
    }
}

enum ReadError {
    /// Past the limit; the rest of the body, to linger on.
    TooLarge(Incoming),
    /// The client's connection failed mid-body.
    Broken,
}

/// The whole body if it fits in `limit` bytes. Read frame by frame rather
/// than through `Limited`, so that an oversized body is handed back unread
/// past the limit and can still be drained before the 413 closes the
/// connection.
async fn read_limited(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut collected: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ReadError::Broken);
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + collected.len();
        if so_far + data.len() > limit {
            return Err(ReadError::TooLarge(body));
        }
        // One frame (the usual case) is kept as is; more are copied together.
        match first.take() {
            None if collected.is_empty() => first = Some(data),
            None => collected.extend_from_slice(&data),
            Some(previous) => {
                let expected = declared.map_or(0, |len| len as usize).min(limit);
                collected.reserve(expected.max(previous.len() + data.len()));
                collected.extend_from_slice(&previous);
                collected.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(collected)))
}

/// Applies an `Idempotency-Key` header: the id of a single-event body
/// (which must not carry a different `"id"`); refused for an array, whose
/// events each carry their own `"id"`.
fn idempotency_key(
    key: Option<&str>,
    is_array: bool,
    batch: &mut [crate::hub::Publication],
) -> Result<(), protocol::BadInput> {
    let Some(key) = key else { return Ok(()) };
    let field = "Idempotency-Key";
    protocol::validate_publish_id(key, field)?;
    let refuse = |problem: &str| Err(protocol::BadInput(format!("{field}: {problem}")));
    match batch {
        [event] if !is_array => match event.id.as_deref() {
            Some(id) if id != key => refuse("differs from the event's \"id\""),
            _ => {
                event.id = Some(key.into());
                Ok(())
            }
        },
        _ => refuse("only for a single-event body; give each event of an array its own \"id\""),
    }
}

fn accepted(status: StatusCode, epoch: &Epoch, seqs: Vec<Seq>, is_array: bool) -> Response<Body> {
    #[derive(Serialize)]
    struct One<'a> {
        epoch: &'a Epoch,
        seq: Seq,
    }
    #[derive(Serialize)]
    struct Many<'a> {
        epoch: &'a Epoch,
        seqs: Vec<Seq>,
    }
    match (is_array, seqs.first()) {
        (false, Some(&seq)) => response::json(status, &One { epoch, seq }),
        _ => response::json(status, &Many { epoch, seqs }),
    }
}

/// 403 for a browser publish from an origin that is neither this one nor
/// in CORS_ORIGINS.
fn origin_not_allowed() -> Response<Body> {
    #[derive(Serialize)]
    struct Refusal {
        error: &'static str,
        code: &'static str,
    }
    let mut answer = response::json(
        StatusCode::FORBIDDEN,
        &Refusal {
            error: "origin not allowed: a browser may publish only from this origin or one in CORS_ORIGINS",
            code: "origin_not_allowed",
        },
    );
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

fn too_large(limit: usize) -> Response<Body> {
    response::json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body: larger than MAX_MESSAGE_BYTES ({limit} bytes)"),
    )
}
