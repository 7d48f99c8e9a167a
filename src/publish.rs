//! `POST /_switchyard/publish`: one event or an array, all-or-nothing.
//!
//! Owns: who may publish (the bearer token, compared in constant time; or,
//! without PUBLISH_TOKEN, loopback peers only — the real TCP peer, never a
//! header), the body size limit, and the 202/400/401/413/503/507 answers
//! (507: the batch would take retained state past MAX_RETAINED_BYTES).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::config::Config;
use crate::hub::{Epoch, Hub, Seq};
use crate::protocol;
use crate::response::{self, Body};

pub async fn handle(
    config: &Config,
    hub: &dyn Hub,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::POST {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST to publish");
    }
    if !may_publish(config, peer, request.headers(), None) {
        return unauthorized(config);
    }
    let limit = config.max_message_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large(limit);
    }
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return too_large(limit),
        Err(_) => return response::json_error(StatusCode::BAD_REQUEST, "body: could not be read"),
    };
    let (batch, is_array) = match protocol::parse_publish_body(&body) {
        Ok(parsed) => parsed,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    match hub.publish(batch).await {
        Ok(receipt) => {
            debug!(%peer, count = receipt.seqs.len(), "published");
            accepted(&receipt.epoch, receipt.seqs, is_array)
        }
        Err(error) => response::hub_error(&error),
    }
}

fn accepted(epoch: &Epoch, seqs: Vec<Seq>, is_array: bool) -> Response<Body> {
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
        (false, Some(&seq)) => response::json(StatusCode::ACCEPTED, &One { epoch, seq }),
        _ => response::json(StatusCode::ACCEPTED, &Many { epoch, seqs }),
    }
}

/// With PUBLISH_TOKEN: `Authorization: Bearer <token>` (or `?token=` on a
/// WebSocket). Without: loopback peers only, so the engine beside the
/// gateway can publish and the internet cannot.
pub fn may_publish(
    config: &Config,
    peer: SocketAddr,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> bool {
    match &config.publish_token {
        Some(expected) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            bearer.or(query_token).is_some_and(|given| {
                constant_time_eq(given.as_bytes(), expected.expose().as_bytes())
            })
        }
        None => peer.ip().to_canonical().is_loopback(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guess was right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(config: &Config) -> Response<Body> {
    let message = if config.publish_token.is_some() {
        "publish token missing or wrong (Authorization: Bearer <PUBLISH_TOKEN>)"
    } else {
        "publishing is only allowed from loopback when PUBLISH_TOKEN is unset"
    };
    let mut answer = response::json_error(StatusCode::UNAUTHORIZED, message);
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
}

fn too_large(limit: usize) -> Response<Body> {
    response::json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body: larger than MAX_MESSAGE_BYTES ({limit} bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
