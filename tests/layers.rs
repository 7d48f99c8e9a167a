//! The tower layers around the router (src/layers/), seen from outside:
//! gzip for the console and client.js only, request ids on the reserved
//! routes, and the bound on proxied requests in flight.

mod support;

use std::time::Duration;

use http::Request;
use http_body_util::Empty;
use support::upstream::Upstream;
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

#[tokio::test]
async fn proxied_requests_past_the_bound_are_shed_with_503() {
    let upstream = Upstream::start().await;
    let gateway =
        Gateway::start(&[("DASHBOARD_URL", &upstream.url()), ("MAX_CONNECTIONS", "2")]).await;
    // Quiet: one request at a time goes through.
    assert_eq!(get(&gateway.url("/")).await.status(), 200);

    // Two slow requests hold the bound...
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gateway.url("/slow?ms=1500");
            tokio::spawn(async move { get(&url).await.status() })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream
        .requests()
        .iter()
        .filter(|(_, uri, _)| uri.starts_with("/slow"))
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...so a third is answered at once, without reaching the dashboard.
    let shed = send(get_with(
        &gateway.url("/inspect"),
        &[("accept", "application/json")],
    ))
    .await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(!upstream
        .requests()
        .iter()
        .any(|(_, uri, _)| uri.starts_with("/inspect")));

    for task in slow {
        assert_eq!(task.await.unwrap(), 200);
    }
    // Permits are given back: the same request now goes through.
    assert_eq!(get(&gateway.url("/inspect")).await.status(), 200);
}
