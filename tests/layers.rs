//! The tower layers around the router (src/layers/), seen from outside:
//! gzip for the console and client.js only, request ids on the reserved
//! routes.

mod support;

use http::Request;
use http_body_util::Empty;
use support::{body_bytes, get, send, Gateway};

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Empty<bytes::Bytes>> {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn pages_are_gzipped_when_asked_and_events_never_are() {
    let gateway = Gateway::start(&[]).await;
    let plain = body_bytes(get(&gateway.url("/_switchyard/client.js")).await).await;
    assert!(plain.len() > 4096, "client.js is {} bytes", plain.len());

    for path in ["/_switchyard/client.js", "/_switchyard/", "/"] {
        let response = send(get_with(&gateway.url(path), &[("accept-encoding", "gzip")])).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-encoding"], "gzip", "{path}");
        let zipped = body_bytes(response).await;
        assert_eq!(&zipped[..2], &[0x1f, 0x8b], "{path}: not a gzip stream");
        assert!(zipped.len() < plain.len() / 2 || path != "/_switchyard/client.js");
    }

    // Without Accept-Encoding: as it is.
    let response = send(get_with(&gateway.url("/_switchyard/client.js"), &[])).await;
    assert!(!response.headers().contains_key("content-encoding"));

    // JSON and the event stream are never compressed.
    for path in ["/_switchyard/config", "/_switchyard/events"] {
        let response = send(get_with(&gateway.url(path), &[("accept-encoding", "gzip")])).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            !response.headers().contains_key("content-encoding"),
            "{path} was compressed"
        );
    }
}

#[tokio::test]
async fn reserved_routes_carry_a_request_id() {
    let gateway = Gateway::start(&[]).await;
    let first = get(&gateway.url("/_switchyard/config")).await;
    let second = get(&gateway.url("/_switchyard/config")).await;
    let id = |r: &http::Response<_>| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id(&first).starts_with("sy-"), "{}", id(&first));
    assert_ne!(id(&first), id(&second));

    // One the client (or an edge proxy) sent is kept.
    let echoed = send(get_with(
        &gateway.url("/_switchyard/config"),
        &[("x-request-id", "edge-42")],
    ))
    .await;
    assert_eq!(echoed.headers()["x-request-id"], "edge-42");

    // Not a reserved route: no id.
    assert!(!get(&gateway.url("/health"))
        .await
        .headers()
        .contains_key("x-request-id"));
}
