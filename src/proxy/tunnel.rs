//! A proxied WebSocket (or any HTTP/1.1 upgrade): once the dashboard has
//! answered 101, the client gets the same 101 with the dashboard's handshake
//! headers (Sec-WebSocket-Accept, -Protocol, -Extensions, so subprotocols
//! and permessage-deflate are negotiated end to end), and the bytes are
//! copied both ways until either side closes or the gateway drains.

use http::header::{self, HeaderValue};
use http::Response;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::headers;
use crate::response::{self, Body};
use crate::shutdown::Shutdown;

/// Answers the client's upgrade with the dashboard's 101 and spawns the copy.
pub fn open(
    client_upgrade: OnUpgrade,
    mut answer: Response<Incoming>,
    shutdown: &Shutdown,
    path: String,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut answer);
    let (mut parts, _) = answer.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, true);
    if !parts.headers.contains_key(header::UPGRADE) {
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }

    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(error) => {
                warn!(path, %error, "tunnel upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        debug!(path, "tunnel opened");
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => debug!(path, bytes_up = up, bytes_down = down, "tunnel closed"),
                Err(error) => debug!(path, %error, "tunnel closed by error"),
            },
            _ = stop.requested() => debug!(path, "tunnel closed for shutdown"),
        }
    });
    Response::from_parts(parts, response::empty())
}
