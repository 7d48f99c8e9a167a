//! `GET /_switchyard/state`: the polling transport.
//!
//! `?topics=` filters; `?epoch=E&since=S` asks for the events after S:
//! `{"epoch","seq","resumed":true,"events":[event frames]}` when the hub can
//! serve that point, else `{"epoch","seq","resumed":false,"state":{...}}`,
//! the full retained state the client must replace its own with.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use crate::hub::{Catchup, Epoch, Seq};
use crate::protocol::{StateMap, SubscriptionQuery};
use crate::response::{self, Body};
use crate::server::Gateway;

pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Response<Body> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return response::json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let query = match SubscriptionQuery::parse(request.uri().query()) {
        Ok(query) => query,
        Err(error) => return response::json_error(StatusCode::BAD_REQUEST, &error.0),
    };
    let snapshot = match gateway.hub.snapshot(query.patterns, query.resume).await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            return response::json_error(StatusCode::SERVICE_UNAVAILABLE, &error.to_string())
        }
    };
    let body = match &snapshot.catchup {
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
            // The event frames are already JSON: splice them in as they are.
            let mut out = BytesMut::new();
            let head =
                serde_json::json!({"epoch": snapshot.epoch, "seq": snapshot.seq, "resumed": true});
            let head = head.to_string();
            out.put_slice(&head.as_bytes()[..head.len() - 1]);
            out.put_slice(b",\"events\":[");
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(event.frame.as_bytes());
            }
            out.put_slice(b"]}");
            out.freeze()
        }
    };
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
