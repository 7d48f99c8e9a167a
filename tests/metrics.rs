//! `/_switchyard/metrics`: scraped and parsed as Prometheus text.

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::upstream::Upstream;
use support::{connect, get, next_json, publish_one, text_body, Gateway};

/// `name{labels}` → value, checking every line is valid exposition format
/// and every sample's family has a `# TYPE`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        let family = types
            .keys()
            .find(|family| {
                name == *family
                    || name
                        .strip_prefix(family.as_str())
                        .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))
            })
            .unwrap_or_else(|| panic!("no # TYPE for {name}"));
        assert!(name.starts_with("switchyard_"), "{name}");
        let _ = family;
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_count_connections_events_proxying_and_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&[("DASHBOARD_URL", &upstream.url())]).await;
    gateway.wait_upstream("up").await;
    let mut client = connect(&gateway, "").await;
    next_json(&mut client).await;
    let mut second = connect(&gateway, "").await;
    next_json(&mut second).await;
    for i in 0..3 {
        publish_one(&gateway, "t", json!(i)).await;
    }
    for _ in 0..3 {
        next_json(&mut client).await;
    }
    assert_eq!(get(&gateway.url("/page")).await.status(), 200);
    assert_eq!(get(&gateway.url("/")).await.status(), 200);
    upstream.kill().await;
    assert_eq!(get(&gateway.url("/gone")).await.status(), 502);
    // The killed upstream's listener closes asynchronously; a probe that
    // still got through could flip the state back: wait until it settles.
    gateway.wait_upstream("down").await;

    let response = get(&gateway.url("/_switchyard/metrics")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = text_body(response).await;
    let metrics = parse(&text);
    let value = |series: &str| {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    assert_eq!(
        value("switchyard_connections{transport=\"websocket\"}"),
        2.0
    );
    assert_eq!(value("switchyard_events_published_total"), 3.0);
    assert_eq!(value("switchyard_events_delivered_total"), 6.0);
    assert_eq!(value("switchyard_events_dropped_total"), 0.0);
    assert_eq!(value("switchyard_slow_client_disconnects_total"), 0.0);
    assert_eq!(value("switchyard_history_size"), 3.0);
    assert_eq!(value("switchyard_proxy_requests_total{class=\"2xx\"}"), 2.0);
    assert_eq!(value("switchyard_proxy_requests_total{class=\"5xx\"}"), 1.0);
    assert_eq!(value("switchyard_proxy_response_seconds_count"), 3.0);
    assert_eq!(value("switchyard_upstream_up"), 0.0);
    assert!(!metrics.contains_key("switchyard_dashboard_restarts_total"));
}
